//! The stdio transport: a child process speaking newline-delimited JSON-RPC
//! on stdin/stdout, its stderr copied to the log.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use cellgate_config::StdioTransport;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::session::{CallError, CloseReason, Outgoing, Shared};

/// Starts the process and the tasks around it; returns its pid. The
/// process runs in its own process group, killed whole when `stop` fires.
pub(crate) fn start(
    cfg: &StdioTransport,
    max: usize,
    shared: Arc<Shared>,
    mut out_rx: mpsc::UnboundedReceiver<Outgoing>,
    stop: CancellationToken,
) -> Result<u32, String> {
    let mut cmd = Command::new(&cfg.command);
    cmd.args(&cfg.args)
        .envs(&cfg.env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    #[cfg(unix)]
    cmd.process_group(0);
    if let Some(cwd) = &cfg.cwd {
        cmd.current_dir(cwd);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start `{}`: {e}", cfg.command))?;
    let pid = child.id().unwrap_or(0);
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err("the process has no pipes".into());
    };

    let writer_shared = shared.clone();
    let writer_stop = stop.clone();
    tokio::spawn(async move {
        loop {
            let out = tokio::select! {
                o = out_rx.recv() => match o { Some(o) => o, None => break },
                _ = writer_stop.cancelled() => break,
            };
            let mut line = serde_json::to_vec(&out.msg).unwrap_or_default();
            line.push(b'\n');
            let written = async {
                stdin.write_all(&line).await?;
                stdin.flush().await
            }
            .await;
            if let Err(e) = written {
                if let Some(id) = out.request_id {
                    writer_shared.fail_request(
                        id,
                        CallError::Transport(format!("cannot write to its stdin: {e}")),
                    );
                }
                if writer_shared.is_closed() {
                    break;
                }
            }
        }
    });

    let (eof_tx, eof_rx) = oneshot::channel::<()>();
    tokio::spawn(read_stdout(
        stdout,
        max,
        shared.clone(),
        stop.clone(),
        eof_tx,
    ));
    tokio::spawn(read_stderr(stderr, shared.clone()));

    tokio::spawn(async move {
        tokio::select! {
            status = child.wait() => {
                // Let the reader hand over what the process wrote last.
                let _ = tokio::time::timeout(Duration::from_secs(1), eof_rx).await;
                let how = match status {
                    Ok(s) => describe_exit(s),
                    Err(e) => format!("status unknown: {e}"),
                };
                tracing::warn!(upstream = %shared.upstream, pid, how = %how, "upstream process ended");
                shared.close(CloseReason::Exited(how));
                // Children it left behind in its group go too.
                kill_group(pid);
            }
            _ = stop.cancelled() => {
                kill_group(pid);
                let _ = child.kill().await;
                shared.close(CloseReason::Shutdown);
            }
        }
    });
    Ok(pid)
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("code {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return format!("signal {sig}");
        }
    }
    "status unknown".into()
}

fn kill_group(pid: u32) {
    #[cfg(unix)]
    if let Ok(pid) = i32::try_from(pid)
        && pid > 0
    {
        // SAFETY: kill(2) with a negative pid signals the process group the
        // child leads (it was started with process_group(0)); it touches no
        // memory of ours.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

async fn read_stdout(
    stdout: impl AsyncRead + Unpin,
    max: usize,
    shared: Arc<Shared>,
    stop: CancellationToken,
    eof: oneshot::Sender<()>,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, stdout);
    let mut line = Vec::new();
    loop {
        match read_line_limited(&mut reader, &mut line, max).await {
            Ok(LineRead::Line) => {
                let text = trim_ascii(&line);
                if text.is_empty() {
                    continue;
                }
                match serde_json::from_slice(text) {
                    Ok(v) => shared.deliver(v, None),
                    Err(_) => shared.note_garbage(&String::from_utf8_lossy(text)),
                }
            }
            Ok(LineRead::TooLong) => {
                shared.close(CloseReason::Protocol(format!(
                    "it wrote a message longer than the limit of {max} bytes (max_message_bytes)"
                )));
                stop.cancel();
                break;
            }
            Ok(LineRead::Eof) | Err(_) => break,
        }
    }
    let _ = eof.send(());
}

async fn read_stderr(stderr: impl AsyncRead + Unpin, shared: Arc<Shared>) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    while let Ok(LineRead::Line | LineRead::TooLong) =
        read_line_limited(&mut reader, &mut line, 16 * 1024).await
    {
        let text = String::from_utf8_lossy(trim_ascii(&line)).into_owned();
        if !text.is_empty() {
            shared.note_stderr(text);
        }
    }
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LineRead {
    Line,
    /// The line was longer than the limit; it was skipped up to the point
    /// where the limit was passed.
    TooLong,
    Eof,
}

/// Reads one `\n`-terminated line into `buf` (without the newline), never
/// holding more than `max` bytes.
pub(crate) async fn read_line_limited<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<LineRead> {
    buf.clear();
    loop {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            return Ok(if buf.is_empty() {
                LineRead::Eof
            } else {
                LineRead::Line
            });
        }
        if let Some(pos) = available.iter().position(|&b| b == b'\n') {
            if buf.len() + pos > max {
                r.consume(pos + 1);
                return Ok(LineRead::TooLong);
            }
            buf.extend_from_slice(&available[..pos]);
            r.consume(pos + 1);
            return Ok(LineRead::Line);
        }
        let n = available.len();
        if buf.len() + n > max {
            r.consume(n);
            return Ok(LineRead::TooLong);
        }
        buf.extend_from_slice(available);
        r.consume(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_read_within_the_limit() {
        let data: &[u8] = b"short\n0123456789abc\nlast";
        let mut r = BufReader::with_capacity(4, data);
        let mut buf = Vec::new();
        assert_eq!(
            read_line_limited(&mut r, &mut buf, 10).await.unwrap(),
            LineRead::Line
        );
        assert_eq!(buf, b"short");
        assert_eq!(
            read_line_limited(&mut r, &mut buf, 10).await.unwrap(),
            LineRead::TooLong
        );
        assert!(buf.len() <= 10);
    }

    #[tokio::test]
    async fn a_line_at_the_limit_passes_and_eof_ends() {
        let data: &[u8] = b"0123456789\nabc";
        let mut r = BufReader::new(data);
        let mut buf = Vec::new();
        assert_eq!(
            read_line_limited(&mut r, &mut buf, 10).await.unwrap(),
            LineRead::Line
        );
        assert_eq!(buf, b"0123456789");
        assert_eq!(
            read_line_limited(&mut r, &mut buf, 10).await.unwrap(),
            LineRead::Line
        );
        assert_eq!(buf, b"abc");
        assert_eq!(
            read_line_limited(&mut r, &mut buf, 10).await.unwrap(),
            LineRead::Eof
        );
    }
}
