//! Embeddings: the [`Embedder`] trait, a local embedder that needs no model
//! ([`HashedEmbedder`]) and an OpenAI-compatible `/v1/embeddings` client
//! ([`HttpEmbedder`]: LM Studio, Ollama, vLLM, OpenAI).

use std::time::Duration;

use cellgate_kernel::BoxFuture;
use serde_json::{Value, json};

use crate::MemoryError;

/// Turns texts into vectors. Vectors of one embedder have one length and
/// are L2-normalised, so the dot product is the cosine similarity.
pub trait Embedder: Send + Sync + 'static {
    /// Names the model: stored next to each vector, so vectors of another
    /// model are recomputed instead of compared.
    fn model(&self) -> &str;

    fn embed<'a>(
        &'a self,
        texts: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Vec<f32>>, MemoryError>>;
}

/// Feature hashing of words, word pairs and character trigrams into a
/// fixed number of signed buckets: deterministic, fast, no download. It
/// captures spelling (typos, inflections share trigrams), not meaning.
#[derive(Debug, Clone)]
pub struct HashedEmbedder {
    dims: usize,
    model: String,
}

impl HashedEmbedder {
    pub const DEFAULT_DIMS: usize = 1024;

    /// `dims` between 16 and 4096.
    pub fn new(dims: usize) -> Result<Self, MemoryError> {
        if !(16..=4096).contains(&dims) {
            return Err(MemoryError::Config {
                key: "embedding.dimensions",
                message: format!("must be within 16..=4096, got {dims}"),
            });
        }
        Ok(Self {
            dims,
            model: format!("cellgate-hashed-v1-{dims}"),
        })
    }

    /// The vector of one text.
    pub fn vector(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0f32; self.dims];
        // Function words carry no topic and would make every text look
        // alike; a fixed list stands in for the inverse document frequency
        // a stateless embedder cannot know.
        let words: Vec<String> = words(text)
            .filter(|w| !STOPWORDS.contains(&w.as_str()))
            .collect();
        for (i, w) in words.iter().enumerate() {
            self.add(&mut v, b'w', w.as_bytes(), 1.0);
            if let Some(next) = words.get(i + 1) {
                self.add(&mut v, b'p', format!("{w} {next}").as_bytes(), 0.5);
            }
            // Trigrams of the word with boundary marks, so short words and
            // word edges count.
            let chars: Vec<char> = format!("^{w}$").chars().collect();
            for t in chars.windows(3) {
                let s: String = t.iter().collect();
                self.add(&mut v, b't', s.as_bytes(), 0.35);
            }
        }
        normalise(&mut v);
        v
    }

    fn add(&self, v: &mut [f32], kind: u8, feature: &[u8], weight: f32) {
        let h = fnv1a(kind, feature);
        let bucket = (h % self.dims as u64) as usize;
        // One hash bit picks the sign, so collisions cancel on average
        // instead of adding up.
        let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
        v[bucket] += sign * weight;
    }
}

impl Default for HashedEmbedder {
    fn default() -> Self {
        Self {
            dims: Self::DEFAULT_DIMS,
            model: format!("cellgate-hashed-v1-{}", Self::DEFAULT_DIMS),
        }
    }
}

impl Embedder for HashedEmbedder {
    fn model(&self) -> &str {
        &self.model
    }

    fn embed<'a>(
        &'a self,
        texts: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Vec<f32>>, MemoryError>> {
        Box::pin(async move { Ok(texts.iter().map(|t| self.vector(t)).collect()) })
    }
}

/// English function words left out of hashed features.
const STOPWORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "by", "did", "do", "does", "for", "from", "has",
    "have", "he", "her", "his", "how", "i", "in", "is", "it", "its", "me", "my", "of", "on", "or",
    "she", "that", "the", "their", "they", "this", "to", "was", "we", "were", "what", "when",
    "where", "which", "who", "why", "will", "with", "you", "your",
];

/// Lower-cased runs of letters and digits.
pub(crate) fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

fn fnv1a(kind: u8, bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in std::iter::once(&kind).chain(bytes) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // A final mix: FNV's high bits (the sign) are weak for short inputs.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

/// Scales to unit length; a zero vector stays zero.
pub(crate) fn normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// Dot product; the cosine similarity of normalised vectors. Eight
/// independent sums let the compiler use SIMD lanes (a single running sum
/// must add in order, which it may not vectorise); this is the inner loop
/// of exact search and of building the HNSW graph.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut lanes = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// An OpenAI-compatible embeddings endpoint: `POST {base_url}/embeddings`
/// with `{"model", "input": [...]}`, answered by `{"data": [{"index",
/// "embedding"}]}`. `base_url` is e.g. `http://127.0.0.1:1234/v1`.
pub struct HttpEmbedder {
    client: reqwest::Client,
    url: String,
    /// The model name sent to the endpoint.
    remote_model: String,
    api_key: Option<String>,
    /// The name stored next to vectors: `openai:<model>`.
    model: String,
}

impl std::fmt::Debug for HttpEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpEmbedder")
            .field("url", &self.url)
            .field("model", &self.remote_model)
            .finish_non_exhaustive()
    }
}

/// Most texts per request; larger batches are split.
const HTTP_BATCH: usize = 64;

impl HttpEmbedder {
    pub fn new(
        base_url: &str,
        model: &str,
        api_key: Option<String>,
        timeout: Duration,
    ) -> Result<Self, MemoryError> {
        let base = base_url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(MemoryError::Config {
                key: "embedding.url",
                message: format!("must be an http(s) URL, got {base_url:?}"),
            });
        }
        if model.is_empty() {
            return Err(MemoryError::Config {
                key: "embedding.model",
                message: "must not be empty".into(),
            });
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| MemoryError::Config {
                key: "embedding.url",
                message: format!("building the HTTP client: {e}"),
            })?;
        Ok(Self {
            client,
            url: format!("{base}/embeddings"),
            remote_model: model.to_owned(),
            api_key,
            model: format!("openai:{model}"),
        })
    }

    async fn batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, MemoryError> {
        let mut request = self
            .client
            .post(&self.url)
            .json(&json!({ "model": self.remote_model, "input": texts }));
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let failed = |message: String| MemoryError::Embedding {
            url: self.url.clone(),
            message,
        };
        let response = request.send().await.map_err(|e| failed(e.to_string()))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .map_err(|e| failed(format!("HTTP {status}, body is not JSON: {e}")))?;
        if !status.is_success() {
            return Err(failed(format!("HTTP {status}: {body}")));
        }
        let data = body
            .get("data")
            .and_then(Value::as_array)
            .ok_or_else(|| failed("answer has no `data` array".into()))?;
        let mut out: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
        for (position, item) in data.iter().enumerate() {
            let index = item
                .get("index")
                .and_then(Value::as_u64)
                .map_or(position, |i| i as usize);
            let vector: Vec<f32> = item
                .get("embedding")
                .and_then(Value::as_array)
                .ok_or_else(|| failed(format!("data[{position}] has no `embedding` array")))?
                .iter()
                .map(|x| x.as_f64().map(|f| f as f32))
                .collect::<Option<_>>()
                .ok_or_else(|| failed(format!("data[{position}].embedding holds a non-number")))?;
            let slot = out
                .get_mut(index)
                .ok_or_else(|| failed(format!("data[{position}].index {index} is out of range")))?;
            *slot = Some(vector);
        }
        let mut vectors = out
            .into_iter()
            .enumerate()
            .map(|(i, v)| v.ok_or_else(|| failed(format!("no embedding for input {i}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let dims = vectors.first().map_or(0, Vec::len);
        if vectors.iter().any(|v| v.len() != dims || v.is_empty()) {
            return Err(failed("embeddings of different or zero length".into()));
        }
        vectors.iter_mut().for_each(|v| normalise(v));
        Ok(vectors)
    }
}

impl Embedder for HttpEmbedder {
    fn model(&self) -> &str {
        &self.model
    }

    fn embed<'a>(
        &'a self,
        texts: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Vec<f32>>, MemoryError>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(texts.len());
            for chunk in texts.chunks(HTTP_BATCH) {
                out.extend(self.batch(chunk).await?);
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_the_plain_sum_at_any_length() {
        for n in [0, 1, 7, 8, 9, 64, 1027] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - plain).abs() < 1e-3, "length {n}");
        }
    }

    #[test]
    fn hashed_vectors_are_unit_and_deterministic() {
        let e = HashedEmbedder::default();
        let a = e.vector("The quick brown fox");
        assert_eq!(a.len(), HashedEmbedder::DEFAULT_DIMS);
        assert!((dot(&a, &a) - 1.0).abs() < 1e-5);
        assert_eq!(a, e.vector("the QUICK brown fox!"));
        assert!(e.vector("").iter().all(|x| *x == 0.0));
    }

    #[test]
    fn typos_stay_close_and_unrelated_text_does_not() {
        let e = HashedEmbedder::default();
        let base = e.vector("favourite colour of Margaret");
        let typo = e.vector("favorite color of Margret");
        let other = e.vector("database backup schedule");
        let (close, far) = (dot(&base, &typo), dot(&base, &other));
        assert!(close > 0.25 && far < 0.1, "typo {close}, unrelated {far}");
    }

    /// Serves one OpenAI-style answer (in reverse index order, to check
    /// reordering) and returns the request it got.
    async fn serve_once(listener: tokio::net::TcpListener, body: String) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        // Read until the JSON body is complete (it ends with `}`).
        loop {
            let n = socket.read(&mut buf).await.expect("read");
            request.extend_from_slice(&buf[..n]);
            if n == 0 || request.ends_with(b"}") {
                break;
            }
        }
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        socket.write_all(answer.as_bytes()).await.expect("write");
        String::from_utf8_lossy(&request).into_owned()
    }

    #[tokio::test]
    async fn http_embedder_speaks_the_openai_format() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
        let body = json!({ "object": "list", "data": [
            { "object": "embedding", "index": 1, "embedding": [0.0, 2.0] },
            { "object": "embedding", "index": 0, "embedding": [3.0, 4.0] }
        ]})
        .to_string();
        let server = tokio::spawn(serve_once(listener, body));
        let e = HttpEmbedder::new(
            &url,
            "nomic-embed",
            Some("k-123".into()),
            Duration::from_secs(5),
        )
        .expect("embedder");
        let vectors = e
            .embed(&["first".into(), "second".into()])
            .await
            .expect("embeds");
        assert_eq!(vectors, vec![vec![0.6, 0.8], vec![0.0, 1.0]]);
        assert_eq!(e.model(), "openai:nomic-embed");
        let request = server.await.expect("server");
        assert!(request.starts_with("POST /v1/embeddings "), "{request}");
        assert!(
            request
                .to_lowercase()
                .contains("authorization: bearer k-123"),
            "{request}"
        );
        assert!(
            request.contains(r#""input":["first","second"]"#) && request.contains("nomic-embed"),
            "{request}"
        );
    }

    #[tokio::test]
    async fn http_embedder_reports_a_bad_answer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
        let server = tokio::spawn(serve_once(
            listener,
            json!({ "error": "no model" }).to_string(),
        ));
        let e = HttpEmbedder::new(&url, "m", None, Duration::from_secs(5)).expect("embedder");
        let err = e.embed(&["x".into()]).await.expect_err("no data");
        assert!(err.to_string().contains("no `data` array"), "{err}");
        server.await.expect("server");
    }

    #[test]
    fn bad_configuration_is_refused() {
        assert!(HashedEmbedder::new(8).is_err());
        assert!(HttpEmbedder::new("ftp://x", "m", None, Duration::from_secs(1)).is_err());
        assert!(HttpEmbedder::new("http://x/v1", "", None, Duration::from_secs(1)).is_err());
    }
}
