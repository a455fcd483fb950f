//! The stdio transport: newline-delimited JSON-RPC on stdin and stdout.
//! Logs go to stderr, never stdout.

use std::sync::Arc;

use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::jsonrpc::{self, Payload};
use crate::server::McpServer;
use crate::session::{Outbound, Session, TransportKind};

struct Stdout(mpsc::UnboundedSender<String>);

impl Outbound for Stdout {
    fn send(&self, msg: &Value, _last: bool) {
        let _ = self.0.send(msg.to_string());
    }
}

/// Reads one line of at most `limit` bytes. Returns `Ok(None)` at end of
/// input and `Err(len)` for a line over the limit (which is skipped whole).
async fn read_line_limited<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<Option<Result<(), usize>>> {
    buf.clear();
    let mut skipped = 0usize;
    loop {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            return Ok(if buf.is_empty() && skipped == 0 {
                None
            } else if skipped > 0 {
                Some(Err(skipped))
            } else {
                Some(Ok(()))
            });
        }
        let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        if skipped > 0 || buf.len() + chunk.len() > limit {
            skipped += buf.len() + chunk.len();
            buf.clear();
        } else {
            buf.extend_from_slice(chunk);
        }
        let consumed = done.unwrap_or(available.len());
        r.consume(consumed);
        if done.is_some() {
            return Ok(Some(if skipped > 0 { Err(skipped) } else { Ok(()) }));
        }
    }
}

/// Serves one client over a reader/writer pair until the reader ends.
pub async fn serve<R, W>(server: Arc<McpServer>, reader: R, mut writer: W) -> std::io::Result<()>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let session = Session::new(TransportKind::Stdio, 1);
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let out: Arc<dyn Outbound> = Arc::new(Stdout(tx.clone()));
    session.set_direct(out.clone());
    server.sessions.insert(session.clone());

    let writer_task = tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            if writer.write_all(line.as_bytes()).await.is_err()
                || writer.write_all(b"\n").await.is_err()
            {
                break;
            }
            // Flush when nothing else is queued, so bursts share one flush.
            if rx.is_empty() && writer.flush().await.is_err() {
                break;
            }
        }
        let _ = writer.flush().await;
    });

    let mut reader = reader;
    let mut buf = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    let limit = server.config.max_body_bytes;
    loop {
        let line = match read_line_limited(&mut reader, &mut buf, limit).await? {
            None => break,
            Some(Err(len)) => {
                let e = cellgate_kernel::McpError::parse_error(format!(
                    "message of {len} bytes exceeds the limit of {limit} bytes"
                ));
                out.send(&jsonrpc::response(&Value::Null, Err(e)), false);
                continue;
            }
            Some(Ok(())) => &buf,
        };
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let messages = match jsonrpc::parse(line, server.config.max_json_depth) {
            Ok(Payload::Single(m)) => vec![Ok(m)],
            Ok(Payload::Batch(items)) if crate::protocol::allows_batches(&session.version()) => {
                items
            }
            Ok(Payload::Batch(_)) => {
                let e = cellgate_kernel::McpError::invalid_request(
                    "JSON-RPC batches are not part of this protocol revision",
                );
                out.send(&jsonrpc::response(&Value::Null, Err(e)), false);
                continue;
            }
            Err(r) => {
                out.send(&jsonrpc::response(&r.id, Err(r.error)), false);
                continue;
            }
        };
        for m in messages {
            match m {
                Err(r) => out.send(&jsonrpc::response(&r.id, Err(r.error)), false),
                // Requests run concurrently so that a call can wait for the
                // client's answer to a sampling request read on this loop.
                Ok(m @ jsonrpc::Message::Request { .. }) => {
                    let server = server.clone();
                    let session = session.clone();
                    let out = out.clone();
                    tasks.spawn(async move {
                        if let Some(resp) =
                            crate::stateless::handle_stdio(&server, &session, m, out.clone()).await
                        {
                            out.send(&resp, true);
                        }
                    });
                }
                Ok(m) => {
                    server.handle_message(&session, m, out.clone()).await;
                }
            }
        }
        while tasks.try_join_next().is_some() {}
    }
    // Input ended: no answer to a server-to-client request can come any
    // more, so the calls waiting for one fail now instead of at their
    // timeout; the rest finish, then the session closes.
    session.fail_pending("the session closed before the client answered");
    session.end_input();
    while tasks.join_next().await.is_some() {}
    server.sessions.remove(&session.id);
    drop(out);
    drop(tx);
    session.set_direct(Arc::new(Stdout(mpsc::unbounded_channel().0)));
    let _ = writer_task.await;
    Ok(())
}

/// Serves the process's own stdin and stdout.
pub async fn serve_stdio(server: Arc<McpServer>) -> std::io::Result<()> {
    serve(
        server,
        tokio::io::BufReader::new(tokio::io::stdin()),
        tokio::io::stdout(),
    )
    .await
}
