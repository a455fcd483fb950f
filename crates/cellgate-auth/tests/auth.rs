//! End-to-end tests of authentication: the JWT attack catalog, every
//! supported algorithm, JWKS rotation against a local server, API keys on a
//! real store, the device flow and `cellgate login` over real HTTP, and the
//! HTTP layer's answers.
//!
//! The keys in `tests/fixtures` were generated for these tests only
//! (`openssl genpkey`); they protect nothing.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cellgate_auth::ed25519_dalek::SigningKey;
use cellgate_auth::ed25519_dalek::pkcs8::EncodePrivateKey as _;
use cellgate_auth::{
    Algorithm, ApiKeySettings, AuthError, AuthStack, ClaimMapping, Clock, HashCost, Identity,
    InstanceKey, IssuerSpec, JwtVerifier, KeySpec, NewKey, TokenRequest,
};
use cellgate_config::Config;
use cellgate_kernel::{AuthMethod, PrincipalKind};
use cellgate_store::{Store, StoreConfig, TenantId};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use tower::ServiceExt as _;

// ---- harness ---------------------------------------------------------------

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let path = std::env::temp_dir().join(format!("cellgate-auth-test-{}", uuid_like()));
        std::fs::create_dir_all(&path).expect("creating a temp dir");
        TempDir(path)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn uuid_like() -> String {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    )
}

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn now() -> i64 {
    Clock::system().now_secs()
}

const AUD: &str = "https://gw.example.com/mcp";
const HMAC_SECRET: &str = "an-hmac-secret-of-at-least-32-bytes!";

fn claims(iss: &str, tenant: &str) -> Value {
    json!({
        "iss": iss, "aud": AUD, "sub": "ada", "tenant": tenant,
        "roles": ["dev"], "scope": "mcp:tools", "iat": now(), "exp": now() + 600,
    })
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("signing")
}

fn b64json(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

fn spec(name: &str, algorithms: &[Algorithm], keys: KeySpec) -> IssuerSpec {
    IssuerSpec {
        name: name.into(),
        issuer: name.into(),
        audiences: vec![AUD.into()],
        algorithms: algorithms.to_vec(),
        keys,
        leeway: Duration::ZERO,
        claims: ClaimMapping::default(),
        pinned_tenant: None,
        principal_kind: PrincipalKind::User,
    }
}

fn pem(name: &str, kid: Option<&str>) -> KeySpec {
    KeySpec::Pem {
        pem: fixture(name),
        kid: kid.map(str::to_owned),
    }
}

fn rsa_signer() -> EncodingKey {
    EncodingKey::from_rsa_pem(fixture("rsa_private.pem").as_bytes()).expect("rsa key")
}

fn ed_encoding(key: &SigningKey) -> EncodingKey {
    EncodingKey::from_ed_der(key.to_pkcs8_der().expect("pkcs8").as_bytes())
}

async fn sqlite_store(dir: &TempDir) -> Store {
    let store = Store::open(&StoreConfig::Sqlite {
        path: dir.path().join("cellgate.db"),
    })
    .await
    .expect("opening the store");
    for t in ["local", "acme", "beta"] {
        store
            .tenants()
            .ensure(&tid(t), t)
            .await
            .expect("ensuring a tenant");
    }
    store
}

fn tid(s: &str) -> TenantId {
    TenantId::parse(s).expect("tenant id")
}

fn cheap_hashing(clock: &Clock) -> ApiKeySettings {
    ApiKeySettings {
        cache_ttl: Duration::from_secs(60),
        cache_entries: 1000,
        hash_cost: HashCost {
            memory_kib: 64,
            iterations: 1,
            lanes: 1,
        },
        clock: clock.clone(),
    }
}

// ---- JWT: every algorithm, and the attack catalog ----------------------------

#[tokio::test]
async fn every_supported_algorithm_is_accepted_when_correct() {
    let ed_seed = SigningKey::from_bytes(&[9u8; 32]);
    let cases: Vec<(Algorithm, EncodingKey, KeySpec)> = vec![
        (
            Algorithm::HS256,
            EncodingKey::from_secret(HMAC_SECRET.as_bytes()),
            KeySpec::Secret {
                secret: HMAC_SECRET.as_bytes().to_vec(),
                kid: None,
            },
        ),
        (
            Algorithm::HS384,
            EncodingKey::from_secret(HMAC_SECRET.as_bytes()),
            KeySpec::Secret {
                secret: HMAC_SECRET.as_bytes().to_vec(),
                kid: None,
            },
        ),
        (
            Algorithm::HS512,
            EncodingKey::from_secret(HMAC_SECRET.as_bytes()),
            KeySpec::Secret {
                secret: HMAC_SECRET.as_bytes().to_vec(),
                kid: None,
            },
        ),
        (Algorithm::RS256, rsa_signer(), pem("rsa_public.pem", None)),
        (Algorithm::RS384, rsa_signer(), pem("rsa_public.pem", None)),
        (Algorithm::RS512, rsa_signer(), pem("rsa_public.pem", None)),
        (Algorithm::PS256, rsa_signer(), pem("rsa_public.pem", None)),
        (Algorithm::PS384, rsa_signer(), pem("rsa_public.pem", None)),
        (Algorithm::PS512, rsa_signer(), pem("rsa_public.pem", None)),
        (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(fixture("ec256_private.pem").as_bytes()).expect("ec"),
            pem("ec256_public.pem", None),
        ),
        (
            Algorithm::ES384,
            EncodingKey::from_ec_pem(fixture("ec384_private.pem").as_bytes()).expect("ec"),
            pem("ec384_public.pem", None),
        ),
        (
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(fixture("ed25519_private.pem").as_bytes()).expect("ed"),
            pem("ed25519_public.pem", None),
        ),
        (
            Algorithm::EdDSA,
            ed_encoding(&ed_seed),
            KeySpec::Ed25519 {
                key: ed_seed.verifying_key(),
                kid: None,
            },
        ),
    ];
    for (alg, signer, keys) in cases {
        let verifier = JwtVerifier::new(vec![spec("idp", &[alg], keys)], 0, Clock::system())
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        let token = sign(alg, &signer, None, &claims("idp", "acme"));
        let identity = verifier
            .verify(&token)
            .await
            .unwrap_or_else(|e| panic!("{alg:?} refused: {e}"));
        assert_eq!(identity.tenant, "acme", "{alg:?}");
        assert_eq!(&*identity.principal.id, "ada");
        assert_eq!(&*identity.principal.roles, ["dev"]);
        assert_eq!(&*identity.principal.scopes, ["mcp:tools"]);
        assert_eq!(identity.principal.auth, AuthMethod::Jwt);
        assert_eq!(
            identity
                .principal
                .claims
                .as_ref()
                .and_then(|c| c["iss"].as_str()),
            Some("idp")
        );
    }
}

#[tokio::test]
async fn attack_catalog_accepts_nothing() {
    let attacker_ed = SigningKey::from_bytes(&[66u8; 32]);
    let ed_fixture_signer =
        EncodingKey::from_ed_pem(fixture("ed25519_private.pem").as_bytes()).expect("ed");
    let mut hmac = spec(
        "ci",
        &[Algorithm::HS256],
        KeySpec::Secret {
            secret: HMAC_SECRET.as_bytes().to_vec(),
            kid: None,
        },
    );
    hmac.pinned_tenant = Some("acme".into());
    let verifier = JwtVerifier::new(
        vec![
            spec(
                "rsa",
                &[Algorithm::RS256],
                pem("rsa_public.pem", Some("rsa-1")),
            ),
            spec("ed", &[Algorithm::EdDSA], pem("ed25519_public.pem", None)),
            hmac,
        ],
        1000,
        Clock::system(),
    )
    .expect("verifier");
    let rsa = rsa_signer();
    let good = sign(
        Algorithm::RS256,
        &rsa,
        Some("rsa-1"),
        &claims("rsa", "acme"),
    );
    verifier
        .verify(&good)
        .await
        .expect("the control token is accepted");
    let [h, p, s] = {
        let parts: Vec<&str> = good.split('.').collect();
        [parts[0], parts[1], parts[2]]
    };
    let with = |patch: Value| {
        let mut c = claims("rsa", "acme");
        for (k, v) in patch.as_object().expect("object") {
            if v.is_null() {
                c.as_object_mut().expect("object").remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        sign(Algorithm::RS256, &rsa, Some("rsa-1"), &c)
    };
    let none_header = b64json(&json!({ "alg": "none", "typ": "JWT" }));
    let mut tampered_claims = claims("rsa", "acme");
    tampered_claims["sub"] = json!("root");
    tampered_claims["roles"] = json!(["admin"]);
    let mut flipped = s.to_owned();
    let last = flipped.pop().expect("signature");
    flipped.push(if last == 'A' { 'B' } else { 'A' });
    let mut embedded = Header::new(Algorithm::EdDSA);
    embedded.jwk = serde_json::from_value(json!({
        "kty": "OKP", "crv": "Ed25519",
        "x": URL_SAFE_NO_PAD.encode(attacker_ed.verifying_key().as_bytes()),
    }))
    .ok();
    embedded.jku = Some("http://127.0.0.1:1/attacker-jwks".into());
    let embedded_key_token =
        jsonwebtoken::encode(&embedded, &claims("ed", "acme"), &ed_encoding(&attacker_ed))
            .expect("signing");

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "alg none, no signature",
            format!("{none_header}.{p}."),
            "unsigned_token",
        ),
        (
            "alg none with a signature",
            format!("{none_header}.{p}.{s}"),
            "unsigned_token",
        ),
        (
            "alg NONE in capitals",
            format!("{}.{p}.{s}", b64json(&json!({ "alg": "NONE" }))),
            "unsigned_token",
        ),
        (
            "HS256 signed with the RS256 public key as secret",
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(fixture("rsa_public.pem").as_bytes()),
                Some("rsa-1"),
                &claims("rsa", "acme"),
            ),
            "algorithm_not_allowed",
        ),
        (
            "RS384 while only RS256 is allowed",
            sign(
                Algorithm::RS384,
                &rsa,
                Some("rsa-1"),
                &claims("rsa", "acme"),
            ),
            "algorithm_not_allowed",
        ),
        (
            "alg in odd case",
            format!(
                "{}.{p}.{s}",
                b64json(&json!({ "alg": "rs256", "kid": "rsa-1" }))
            ),
            "algorithm_not_allowed",
        ),
        ("expired", with(json!({ "exp": now() - 5 })), "expired"),
        (
            "not yet valid",
            with(json!({ "nbf": now() + 600 })),
            "not_yet_valid",
        ),
        (
            "wrong aud",
            with(json!({ "aud": "https://other.example.com/mcp" })),
            "wrong_audience",
        ),
        ("aud missing", with(json!({ "aud": null })), "missing_claim"),
        (
            "wrong iss",
            with(json!({ "iss": "https://evil.example.com" })),
            "unknown_issuer",
        ),
        ("iss missing", with(json!({ "iss": null })), "missing_claim"),
        ("missing exp", with(json!({ "exp": null })), "missing_claim"),
        (
            "exp not a number",
            with(json!({ "exp": "tomorrow" })),
            "bad_claim",
        ),
        (
            "unknown kid",
            sign(
                Algorithm::RS256,
                &rsa,
                Some("rsa-2"),
                &claims("rsa", "acme"),
            ),
            "unknown_key_id",
        ),
        (
            "tampered payload",
            format!("{h}.{}.{s}", b64json(&tampered_claims)),
            "bad_signature",
        ),
        (
            "tampered signature",
            format!("{h}.{p}.{flipped}"),
            "bad_signature",
        ),
        (
            "truncated signature",
            format!("{h}.{p}.{}", &s[..s.len() / 2]),
            "bad_signature",
        ),
        (
            "truncated to two parts",
            format!("{h}.{p}"),
            "malformed_token",
        ),
        ("four parts", format!("{h}.{p}.{s}.{s}"), "malformed_token"),
        (
            "oversized",
            format!("{h}.{}.{s}", "A".repeat(9000)),
            "token_too_large",
        ),
        (
            "non-JSON header",
            format!("{}.{p}.{s}", URL_SAFE_NO_PAD.encode("{alg: RS256")),
            "malformed_token",
        ),
        (
            "header not base64url",
            format!("{h}+/.{p}.{s}"),
            "malformed_token",
        ),
        (
            "crit header",
            format!(
                "{}.{p}.{s}",
                b64json(&json!({ "alg": "RS256", "kid": "rsa-1", "crit": ["exp"] }))
            ),
            "malformed_token",
        ),
        (
            "kid path traversal",
            sign(
                Algorithm::RS256,
                &rsa,
                Some("../../../../etc/passwd"),
                &claims("rsa", "acme"),
            ),
            "unknown_key_id",
        ),
        (
            "kid SQL injection",
            sign(
                Algorithm::RS256,
                &rsa,
                Some("x' OR '1'='1"),
                &claims("rsa", "acme"),
            ),
            "unknown_key_id",
        ),
        (
            "kid with NUL and newline",
            sign(
                Algorithm::RS256,
                &rsa,
                Some("rsa-1\0\n"),
                &claims("rsa", "acme"),
            ),
            "unknown_key_id",
        ),
        (
            "kid not a string",
            format!("{}.{p}.{s}", b64json(&json!({ "alg": "RS256", "kid": 7 }))),
            "malformed_token",
        ),
        (
            "key embedded in the token (jwk, jku)",
            embedded_key_token,
            "bad_signature",
        ),
        (
            "EdDSA token signed by another Ed25519 key",
            sign(
                Algorithm::EdDSA,
                &ed_encoding(&attacker_ed),
                None,
                &claims("ed", "acme"),
            ),
            "bad_signature",
        ),
        (
            "another tenant while the issuer is pinned",
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(HMAC_SECRET.as_bytes()),
                None,
                &claims("ci", "beta"),
            ),
            "wrong_tenant",
        ),
        (
            "HMAC with a guessed secret",
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes"),
                None,
                &claims("ci", "acme"),
            ),
            "bad_signature",
        ),
        (
            "tenant claim not a tenant id",
            sign(
                Algorithm::EdDSA,
                &ed_fixture_signer,
                None,
                &claims("ed", "../etc"),
            ),
            "bad_claim",
        ),
        (
            "no tenant at all",
            sign(
                Algorithm::EdDSA,
                &ed_fixture_signer,
                None,
                &json!({ "iss": "ed", "aud": AUD, "sub": "ada", "exp": now() + 60 }),
            ),
            "missing_claim",
        ),
    ];
    let mut accepted = Vec::new();
    for (name, token, reason) in &cases {
        match verifier.verify(token).await {
            Ok(identity) => accepted.push(format!("{name}: accepted as {identity:?}")),
            Err(e) => assert_eq!(e.reason(), *reason, "{name}: {e}"),
        }
    }
    assert!(accepted.is_empty(), "accepted: {accepted:#?}");
    // The control token still works, from the cache, and only it was cached.
    assert_eq!(verifier.cached_tokens(), 1);
    assert!(verifier.verify(&good).await.is_ok());
}

#[tokio::test]
async fn key_confusion_cannot_be_configured() {
    let mixed = spec(
        "mixed",
        &[Algorithm::HS256, Algorithm::RS256],
        pem("rsa_public.pem", None),
    );
    assert!(JwtVerifier::new(vec![mixed], 0, Clock::system()).is_err());
    // A public key offered to an HMAC-only issuer fits none of its algorithms.
    let hmac_with_pem = spec("h", &[Algorithm::HS256], pem("rsa_public.pem", None));
    let err = JwtVerifier::new(vec![hmac_with_pem], 0, Clock::system()).expect_err("refused");
    assert!(err.to_string().contains("fits none"), "{err}");
    let short = spec(
        "s",
        &[Algorithm::HS256],
        KeySpec::Secret {
            secret: b"short".to_vec(),
            kid: None,
        },
    );
    assert!(JwtVerifier::new(vec![short], 0, Clock::system()).is_err());
    let ec_wrong_curve = spec("e", &[Algorithm::ES256], pem("ec384_public.pem", None));
    assert!(JwtVerifier::new(vec![ec_wrong_curve], 0, Clock::system()).is_err());
}

#[tokio::test]
async fn cached_tokens_still_expire() {
    let clock = Clock::manual();
    let verifier = JwtVerifier::new(
        vec![spec(
            "ci",
            &[Algorithm::HS256],
            KeySpec::Secret {
                secret: HMAC_SECRET.as_bytes().to_vec(),
                kid: None,
            },
        )],
        100,
        clock.clone(),
    )
    .expect("verifier");
    let token = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(HMAC_SECRET.as_bytes()),
        None,
        &claims("ci", "acme"),
    );
    let first = verifier.verify(&token).await.expect("accepted");
    assert_eq!(verifier.cached_tokens(), 1);
    assert_eq!(verifier.verify(&token).await.expect("cached"), first);
    clock.advance(Duration::from_secs(601));
    assert_eq!(
        verifier.verify(&token).await.map_err(|e| e.reason()),
        Err("expired")
    );
}

// ---- JWKS ------------------------------------------------------------------

struct JwksServer {
    url: String,
    keys: Arc<Mutex<Value>>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn jwks_server(initial: Value) -> JwksServer {
    let keys = Arc::new(Mutex::new(initial));
    let hits = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding");
    let addr = listener.local_addr().expect("address");
    let (k, n) = (keys.clone(), hits.clone());
    let app = Router::new().route(
        "/jwks",
        get(move || {
            let doc = k.lock().expect("lock").clone();
            n.fetch_add(1, Ordering::SeqCst);
            async move { axum::Json(doc) }
        }),
    );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    JwksServer {
        url: format!("http://{addr}/jwks"),
        keys,
        hits,
        task,
    }
}

fn ed_jwk(key: &SigningKey, kid: &str) -> Value {
    json!({
        "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes()),
    })
}

#[tokio::test]
async fn jwks_rotation_is_picked_up_and_refetches_are_rate_limited() {
    let key_a = SigningKey::from_bytes(&[1u8; 32]);
    let key_b = SigningKey::from_bytes(&[2u8; 32]);
    let mut rsa_jwk: Value = serde_json::from_str(&fixture("rsa_public.jwk.json")).expect("jwk");
    rsa_jwk["kid"] = json!("rsa");
    let server = jwks_server(json!({ "keys": [ed_jwk(&key_a, "a"), rsa_jwk] })).await;
    let clock = Clock::manual();
    let verifier = JwtVerifier::new(
        vec![spec(
            "idp",
            &[Algorithm::EdDSA, Algorithm::RS256],
            KeySpec::Jwks {
                url: server.url.clone(),
                refresh: Duration::from_secs(300),
                min_refetch: Duration::from_secs(30),
            },
        )],
        0,
        clock.clone(),
    )
    .expect("verifier");
    let fetches = || verifier.jwks_fetches("idp").expect("a JWKS issuer");
    let token = |key: &SigningKey, kid: &str| {
        let mut c = claims("idp", "acme");
        c["jti"] = json!(uuid_like());
        sign(Algorithm::EdDSA, &ed_encoding(key), Some(kid), &c)
    };

    verifier.verify(&token(&key_a, "a")).await.expect("key a");
    let rsa_token = sign(
        Algorithm::RS256,
        &rsa_signer(),
        Some("rsa"),
        &claims("idp", "acme"),
    );
    verifier
        .verify(&rsa_token)
        .await
        .expect("rsa key from the JWKS");
    assert_eq!((fetches(), server.hits.load(Ordering::SeqCst)), (1, 1));

    // The issuer rotates to key b. Right after a fetch, an unknown kid does
    // not cause another one.
    *server.keys.lock().expect("lock") = json!({ "keys": [ed_jwk(&key_b, "b")] });
    let refused = verifier.verify(&token(&key_b, "b")).await;
    assert_eq!(refused.map_err(|e| e.reason()), Err("unknown_key_id"));
    for i in 0..25 {
        let forged = verifier
            .verify(&token(&key_b, &format!("forged-{i}")))
            .await;
        assert_eq!(forged.map_err(|e| e.reason()), Err("unknown_key_id"));
    }
    assert_eq!(fetches(), 1, "forged kids must not cause fetches");

    // Once the minimum interval has passed, the unknown kid is fetched.
    clock.advance(Duration::from_secs(31));
    verifier
        .verify(&token(&key_b, "b"))
        .await
        .expect("key b after the refetch");
    assert_eq!(fetches(), 2);
    // A storm of forged kids after that costs nothing more...
    for i in 0..25 {
        assert!(
            verifier
                .verify(&token(&key_b, &format!("storm-{i}")))
                .await
                .is_err()
        );
    }
    assert_eq!(fetches(), 2);
    // ...and at most one fetch per interval later on.
    clock.advance(Duration::from_secs(31));
    for i in 0..25 {
        assert!(
            verifier
                .verify(&token(&key_b, &format!("later-{i}")))
                .await
                .is_err()
        );
    }
    assert_eq!(fetches(), 3);
    // The rotated-out key is gone.
    assert_eq!(
        verifier
            .verify(&token(&key_a, "a"))
            .await
            .map_err(|e| e.reason()),
        Err("unknown_key_id")
    );
    // The set is refreshed on its interval even when every kid is known.
    clock.advance(Duration::from_secs(301));
    verifier.verify(&token(&key_b, "b")).await.expect("key b");
    assert_eq!(fetches(), 4);
    assert_eq!(server.hits.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn an_unreachable_jwks_makes_authentication_unavailable_not_open() {
    let server = jwks_server(json!({ "keys": [] })).await;
    let key = SigningKey::from_bytes(&[3u8; 32]);
    let verifier = JwtVerifier::new(
        vec![spec(
            "idp",
            &[Algorithm::EdDSA],
            KeySpec::Jwks {
                url: server.url.clone(),
                refresh: Duration::from_secs(300),
                min_refetch: Duration::from_secs(30),
            },
        )],
        0,
        Clock::system(),
    )
    .expect("verifier");
    let token = sign(
        Algorithm::EdDSA,
        &ed_encoding(&key),
        Some("k"),
        &claims("idp", "acme"),
    );
    let err = verifier.verify(&token).await.expect_err("no keys");
    assert_eq!(err.reason(), "keys_unavailable");
    assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(err.to_string().contains("no usable signature key"), "{err}");
}

// ---- API keys ----------------------------------------------------------------

#[tokio::test]
async fn api_keys_are_created_verified_revoked_and_expire() {
    let dir = TempDir::new();
    let store = sqlite_store(&dir).await;
    let clock = Clock::manual();
    let service =
        cellgate_auth::ApiKeyService::new(store.clone(), cheap_hashing(&clock)).expect("service");
    let issued = service
        .create(&NewKey {
            tenant: tid("acme"),
            principal: "ci-bot".into(),
            name: "deploys".into(),
            roles: vec!["deployer".into()],
            ttl: None,
        })
        .await
        .expect("created");
    let key = issued.key.expose().to_owned();
    assert!(
        key.starts_with(&format!("cgk_{}_", issued.record.key_id)),
        "{key}"
    );
    assert_eq!(key.len(), 4 + 24 + 1 + 43);
    assert!(
        !format!("{issued:?}").contains(&key[30..]),
        "the key leaks in Debug"
    );

    // Only an Argon2id hash is stored, never the key or its secret.
    let stored = store
        .scope(&tid("acme"))
        .api_keys()
        .get(&issued.record.key_id)
        .await
        .expect("get")
        .expect("stored");
    let secret = &key[4 + 24 + 1..];
    assert!(
        stored.secret_hash.starts_with("$argon2id$v=19$"),
        "{}",
        stored.secret_hash
    );
    assert!(!stored.secret_hash.contains(secret));
    assert_eq!(stored.roles, ["deployer"]);

    let identity = service.verify(&key).await.expect("verified");
    assert_eq!(identity.tenant, "acme");
    assert_eq!(&*identity.principal.id, "ci-bot");
    assert_eq!(&*identity.principal.roles, ["deployer"]);
    assert_eq!(identity.principal.auth, AuthMethod::ApiKey);
    assert_eq!(service.cached(), 1);

    // Wrong secret with the right id, an unknown id, and garbage are all
    // the same refusal.
    let other_secret = URL_SAFE_NO_PAD.encode([0u8; 32]);
    let wrong_secret = format!("cgk_{}_{other_secret}", issued.record.key_id);
    let unknown_id = format!("cgk_{}_{secret}", "0".repeat(24));
    for bad in [
        wrong_secret.as_str(),
        unknown_id.as_str(),
        "cgk_nonsense",
        "cgk_",
    ] {
        let err = service.verify(bad).await.expect_err("refused");
        assert_eq!(err, AuthError::InvalidApiKey, "{bad}");
        assert_eq!(err.to_string(), "the API key is not valid");
    }

    // Last use is recorded in a batch, not per call.
    assert_eq!(
        store
            .scope(&tid("acme"))
            .api_keys()
            .get(&issued.record.key_id)
            .await
            .expect("get")
            .and_then(|r| r.last_used_at_ms),
        None
    );
    assert_eq!(service.flush_last_used().await.expect("flush"), 1);
    assert!(
        store
            .scope(&tid("acme"))
            .api_keys()
            .get(&issued.record.key_id)
            .await
            .expect("get")
            .and_then(|r| r.last_used_at_ms)
            .is_some()
    );
    assert_eq!(service.flush_last_used().await.expect("flush"), 0);

    // Another tenant cannot revoke it.
    assert!(
        service
            .revoke(&tid("beta"), &issued.record.key_id)
            .await
            .expect("revoke")
            .is_none()
    );
    service.verify(&key).await.expect("still valid");

    // Revoking clears the cache on this instance at once.
    let revoked = service
        .revoke(&tid("acme"), &issued.record.key_id)
        .await
        .expect("revoke")
        .expect("found");
    assert!(revoked.revoked_at_ms.is_some());
    assert_eq!(service.cached(), 0);
    assert_eq!(service.verify(&key).await, Err(AuthError::ApiKeyRevoked));

    // Expiry.
    let short = service
        .create(&NewKey {
            tenant: tid("acme"),
            principal: "temp".into(),
            name: String::new(),
            roles: vec![],
            ttl: Some(Duration::from_secs(3600)),
        })
        .await
        .expect("created");
    service
        .verify(short.key.expose())
        .await
        .expect("valid for now");
    clock.advance(Duration::from_secs(3601));
    assert_eq!(
        service.verify(short.key.expose()).await,
        Err(AuthError::ApiKeyExpired)
    );

    let listed = service.list(&tid("acme")).await.expect("list");
    assert_eq!(listed.len(), 2);
    assert!(service.list(&tid("beta")).await.expect("list").is_empty());
    store.close().await;
}

#[tokio::test]
async fn a_cached_key_is_checked_again_after_the_cache_ttl() {
    let dir = TempDir::new();
    let store = sqlite_store(&dir).await;
    let clock = Clock::manual();
    let service =
        cellgate_auth::ApiKeyService::new(store.clone(), cheap_hashing(&clock)).expect("service");
    let issued = service
        .create(&NewKey {
            tenant: tid("acme"),
            principal: "bot".into(),
            name: String::new(),
            roles: vec![],
            ttl: None,
        })
        .await
        .expect("created");
    service.verify(issued.key.expose()).await.expect("valid");
    // Revoked behind this instance's back (another replica): the cache
    // holds until its TTL, then the store's answer counts.
    store
        .scope(&tid("acme"))
        .api_keys()
        .revoke(&issued.record.key_id)
        .await
        .expect("revoke");
    service
        .verify(issued.key.expose())
        .await
        .expect("cached for now");
    clock.advance(Duration::from_secs(61));
    assert_eq!(
        service.verify(issued.key.expose()).await,
        Err(AuthError::ApiKeyRevoked)
    );
    store.close().await;
}

// ---- the HTTP layer, metadata and the device flow -----------------------------

struct App {
    base: String,
    stack: AuthStack,
    store: Store,
    clock: Clock,
    http: reqwest::Client,
    router: Router,
    task: tokio::task::JoinHandle<()>,
    _dir: TempDir,
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo_identity(axum::Extension(identity): axum::Extension<Identity>) -> axum::Json<Value> {
    axum::Json(json!({
        "tenant": identity.tenant,
        "principal": &*identity.principal.id,
        "roles": &*identity.principal.roles,
        "scopes": &*identity.principal.scopes,
        "auth": identity.principal.auth,
    }))
}

/// A server with `/mcp` (echoes the identity) and `/healthz` behind the
/// layer, plus the stack's own routes.
async fn app(required: bool, tweak: impl FnOnce(&mut Config)) -> App {
    let dir = TempDir::new();
    let store = sqlite_store(&dir).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding");
    let addr = listener.local_addr().expect("address");
    let mut config = Config {
        data_dir: Some(dir.path().display().to_string()),
        ..Config::default()
    };
    config.server.listen = addr.to_string();
    config.auth.required = required;
    config.auth.scopes_supported = vec!["mcp:tools".into()];
    tweak(&mut config);
    let clock = Clock::manual();
    let stack = AuthStack::build(
        &config,
        store.clone(),
        clock.clone(),
        cheap_hashing(&clock),
        None,
    )
    .expect("stack");
    let router = Router::new()
        .route("/mcp", get(echo_identity).post(echo_identity))
        .route("/healthz", get(|| async { "ok" }))
        .merge(stack.routes())
        .layer(stack.layer());
    let served = router.clone();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, served).await;
    });
    App {
        base: format!("http://{addr}"),
        stack,
        store,
        clock,
        http: reqwest::Client::new(),
        router,
        task,
        _dir: dir,
    }
}

impl App {
    async fn admin_key(&self, tenant: &str) -> String {
        self.api_key(tenant, &["admin"]).await
    }

    async fn api_key(&self, tenant: &str, roles: &[&str]) -> String {
        let service = self.stack.api_keys.as_ref().expect("api keys on");
        service
            .create(&NewKey {
                tenant: tid(tenant),
                principal: format!("{tenant}-admin"),
                name: "test".into(),
                roles: roles.iter().map(|r| (*r).to_owned()).collect(),
                ttl: None,
            })
            .await
            .expect("created")
            .key
            .expose()
            .to_owned()
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> (StatusCode, String, Value) {
        let mut request = self.http.get(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let www = response
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = response.json::<Value>().await.unwrap_or(Value::Null);
        (status, www, body)
    }

    async fn form(&self, path: &str, pairs: &[(&str, &str)]) -> (StatusCode, String) {
        let body = pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", urlencode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("request");
        let status = response.status();
        (status, response.text().await.expect("body"))
    }

    async fn start_device(&self) -> Value {
        let (status, body) = self
            .form(
                "/oauth/device_authorization",
                &[("client_id", "cellgate-cli"), ("scope", "mcp:tools")],
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        serde_json::from_str(&body).expect("json")
    }

    async fn poll(&self, device_code: &str) -> (StatusCode, Value) {
        let (status, body) = self
            .form(
                "/oauth/token",
                &[
                    ("grant_type", cellgate_auth::DEVICE_CODE_GRANT),
                    ("device_code", device_code),
                    ("client_id", "cellgate-cli"),
                ],
            )
            .await;
        (status, serde_json::from_str(&body).expect("json"))
    }

    async fn decide(
        &self,
        user_code: &str,
        credential: &str,
        decision: &str,
        roles: &str,
    ) -> (StatusCode, String) {
        self.form(
            "/device",
            &[
                ("user_code", user_code),
                ("credential", credential),
                ("decision", decision),
                ("roles", roles),
            ],
        )
        .await
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn error_of(body: &Value) -> &str {
    body["error"].as_str().unwrap_or("<none>")
}

#[tokio::test]
async fn refusals_carry_the_exact_www_authenticate_header() {
    let app = app(true, |_| {}).await;
    let metadata = format!("{}/.well-known/oauth-protected-resource/mcp", app.base);

    let (status, www, body) = app.get("/mcp", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(www, format!("Bearer resource_metadata=\"{metadata}\""));
    assert_eq!(body["reason"], "missing_credential");

    let (status, www, body) = app
        .get("/mcp", &[("authorization", "Bearer bm90anNvbg.e30.c2ln")])
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        www,
        format!(
            "Bearer resource_metadata=\"{metadata}\", error=\"invalid_token\", \
             error_description=\"the token is malformed: the header is not a JSON object\""
        )
    );
    assert_eq!(
        (body["error"].as_str(), body["reason"].as_str()),
        (Some("invalid_token"), Some("malformed_token"))
    );

    let expired = app
        .stack
        .local_issuer
        .as_ref()
        .expect("local issuer")
        .issue(&TokenRequest {
            ttl: Some(Duration::from_secs(60)),
            ..TokenRequest::new("acme", "ada", &["dev"])
        })
        .expect("issued");
    app.clock.advance(Duration::from_secs(120));
    let (status, www, body) = app
        .get(
            "/mcp",
            &[(
                "authorization",
                &format!("Bearer {}", expired.token.expose()),
            )],
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        www.contains("error=\"invalid_token\", error_description=\"the token expired at"),
        "{www}"
    );
    assert_eq!(body["reason"], "expired");

    // API keys: a wrong one says nothing about which part was wrong.
    let key = app.api_key("acme", &["dev"]).await;
    let (id, _) = key[4..].split_once('_').expect("shape");
    let forged = format!("cgk_{id}_{}", URL_SAFE_NO_PAD.encode([1u8; 32]));
    let (status, www, body) = app.get("/mcp", &[("x-api-key", &forged)]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        www.ends_with("error=\"invalid_token\", error_description=\"the API key is not valid\""),
        "{www}"
    );
    assert_eq!(body["reason"], "invalid_api_key");

    // Malformed requests are 400 invalid_request.
    let (status, www, body) = app.get(&format!("/mcp?access_token={key}"), &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(www.contains("error=\"invalid_request\""), "{www}");
    assert_eq!(body["reason"], "token_in_query");
    let (status, _, body) = app
        .get(
            "/mcp",
            &[
                ("authorization", &format!("Bearer {key}")),
                ("x-api-key", &key),
            ],
        )
        .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (StatusCode::BAD_REQUEST, Some("multiple_credentials"))
    );
    let (status, _, body) = app.get("/mcp", &[("authorization", "Basic YTpi")]).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unsupported_scheme"))
    );

    // Oversized tokens are refused before parsing.
    let huge = format!("Bearer {}", "a".repeat(9000));
    let (status, _, body) = app.get("/mcp", &[("authorization", &huge)]).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("token_too_large"))
    );

    // Good credentials, both ways an API key may come.
    for headers in [
        vec![("x-api-key", key.as_str())],
        vec![("authorization", &*format!("Bearer {key}"))],
    ] {
        let (status, _, body) = app.get("/mcp", &headers).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            (body["tenant"].as_str(), body["auth"].as_str()),
            (Some("acme"), Some("api_key"))
        );
    }
}

#[tokio::test]
async fn metadata_and_exempt_paths_are_served_without_credentials() {
    let app = app(true, |c| {
        c.auth.authorization_servers = vec!["https://idp.example.com".into()];
    })
    .await;
    for path in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    ] {
        let (status, _, doc) = app.get(path, &[]).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(
            doc,
            json!({
                "resource": format!("{}/mcp", app.base),
                "authorization_servers": ["https://idp.example.com", app.base],
                "scopes_supported": ["mcp:tools"],
                "bearer_methods_supported": ["header"],
                "resource_name": "cellgate",
            }),
            "{path}"
        );
    }
    let (status, _, as_doc) = app
        .get("/.well-known/oauth-authorization-server", &[])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(as_doc["issuer"], json!(app.base));
    assert_eq!(
        as_doc["token_endpoint"],
        json!(format!("{}/oauth/token", app.base))
    );
    assert_eq!(
        as_doc["grant_types_supported"],
        json!([cellgate_auth::DEVICE_CODE_GRANT])
    );

    let health = app
        .http
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .expect("get");
    assert_eq!(health.status(), StatusCode::OK);
    let page = app
        .http
        .get(format!("{}/device", app.base))
        .send()
        .await
        .expect("get");
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(
        page.headers()
            .get(header::X_FRAME_OPTIONS)
            .and_then(|v| v.to_str().ok()),
        Some("DENY")
    );

    // Dot segments, doubled slashes and escapes never ride on an exempt
    // prefix (sent without the client normalising the path).
    for path in [
        "/oauth/../mcp",
        "/.well-known/./../mcp",
        "/oauth//x",
        "/.well-known/%2e%2e/mcp",
    ] {
        let response = app
            .router
            .clone()
            .oneshot(
                Request::builder()
                    .uri(path)
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
}

#[tokio::test]
async fn optional_authentication_is_anonymous_without_a_credential_only() {
    let app = app(false, |_| {}).await;
    let (status, _, body) = app.get("/mcp", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({ "tenant": "local", "principal": "anonymous", "roles": [], "scopes": [], "auth": "none" })
    );
    // A credential that is presented must be valid all the same.
    let (status, _, body) = app
        .get("/mcp", &[("authorization", "Bearer cgk_bogus")])
        .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_api_key"))
    );
    let (status, _, _) = app.get("/mcp", &[("authorization", "Bearer a.b.c")]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn dev_tokens_from_the_data_directory_are_accepted() {
    let app = app(true, |_| {}).await;
    let mut config = Config {
        data_dir: Some(app._dir.path().display().to_string()),
        ..Config::default()
    };
    config.server.listen = app.base.trim_start_matches("http://").to_owned();
    let issued = cellgate_auth::issue_dev_token(
        &config,
        &TokenRequest {
            scopes: vec!["mcp:tools".into()],
            ..TokenRequest::new("beta", "grace", &["admin", "dev"])
        },
    )
    .expect("issued");
    let key = InstanceKey::load_or_create(app._dir.path()).expect("same key");
    assert_eq!(
        app.stack.instance_key.as_ref().map(|k| k.verifying_key()),
        Some(key.verifying_key())
    );
    let (status, _, body) = app
        .get(
            "/mcp",
            &[(
                "authorization",
                &format!("Bearer {}", issued.token.expose()),
            )],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({ "tenant": "beta", "principal": "grace", "roles": ["admin", "dev"], "scopes": ["mcp:tools"], "auth": "jwt" })
    );
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(issued.token.expose().split('.').nth(1).expect("payload"))
            .expect("base64"),
    )
    .expect("json");
    assert_eq!(claims["iss"], json!(app.base));
    assert_eq!(claims["aud"], json!(format!("{}/mcp", app.base)));
}

#[tokio::test]
async fn device_flow_pending_slow_down_approve_and_token() {
    let app = app(true, |_| {}).await;
    let grant = app.start_device().await;
    let device_code = grant["device_code"].as_str().expect("device code");
    let user_code = grant["user_code"].as_str().expect("user code");
    assert!(
        cellgate_auth::normalize_user_code(user_code).as_deref() == Some(user_code),
        "{user_code}"
    );
    assert_eq!(
        grant["verification_uri"],
        json!(format!("{}/device", app.base))
    );
    assert_eq!(
        grant["verification_uri_complete"],
        json!(format!("{}/device?user_code={user_code}", app.base))
    );
    assert_eq!(
        (grant["expires_in"].as_u64(), grant["interval"].as_u64()),
        (Some(600), Some(5))
    );

    let (status, body) = app.poll(device_code).await;
    assert_eq!(
        (status, error_of(&body)),
        (StatusCode::BAD_REQUEST, "authorization_pending")
    );
    let (_, body) = app.poll(device_code).await;
    assert_eq!(error_of(&body), "slow_down");
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("10 seconds")),
        "{body}"
    );
    // Waiting the grown interval makes it pending again.
    app.clock.advance(Duration::from_secs(10));
    let (_, body) = app.poll(device_code).await;
    assert_eq!(error_of(&body), "authorization_pending");

    // Approval needs a credential with an approver role.
    let (status, page) = app.decide(user_code, "cgk_wrong", "approve", "dev").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{page}");
    let viewer = app.api_key("acme", &["viewer"]).await;
    let (status, page) = app.decide(user_code, &viewer, "approve", "dev").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{page}");
    let admin = app.admin_key("acme").await;
    let (status, page) = app.decide("BCDF-BCDF", &admin, "approve", "dev").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{page}");
    let (status, page) = app
        .decide(&user_code.to_lowercase(), &admin, "approve", "dev, tester")
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("Device approved"), "{page}");

    let (status, body) = app.poll(device_code).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "mcp:tools");
    let token = body["access_token"].as_str().expect("token");
    let (status, _, me) = app
        .get("/mcp", &[("authorization", &format!("Bearer {token}"))])
        .await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(
        me,
        json!({ "tenant": "acme", "principal": "acme-admin", "roles": ["dev", "tester"], "scopes": ["mcp:tools"], "auth": "jwt" })
    );
    // The device code is spent.
    let (_, body) = app.poll(device_code).await;
    assert_eq!(error_of(&body), "invalid_grant");

    let (_, body) = app.poll("not-a-device-code").await;
    assert_eq!(error_of(&body), "invalid_grant");
    let (status, body) = app
        .form(
            "/oauth/token",
            &[("grant_type", "password"), ("device_code", device_code)],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("unsupported_grant_type"), "{body}");
    let (status, body) = app.form("/oauth/device_authorization", &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("invalid_request"), "{body}");
}

#[tokio::test]
async fn device_flow_denied_and_expired() {
    let app = app(true, |_| {}).await;
    let admin = app.admin_key("acme").await;

    let denied = app.start_device().await;
    let (status, page) = app
        .decide(
            denied["user_code"].as_str().expect("code"),
            &admin,
            "deny",
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let (_, body) = app
        .poll(denied["device_code"].as_str().expect("code"))
        .await;
    assert_eq!(error_of(&body), "access_denied");
    // A decided code cannot be approved afterwards.
    let (status, _) = app
        .decide(
            denied["user_code"].as_str().expect("code"),
            &admin,
            "approve",
            "dev",
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let expiring = app.start_device().await;
    app.clock.advance(Duration::from_secs(601));
    let (_, body) = app
        .poll(expiring["device_code"].as_str().expect("code"))
        .await;
    assert_eq!(error_of(&body), "expired_token");
    let (status, _) = app
        .decide(
            expiring["user_code"].as_str().expect("code"),
            &admin,
            "approve",
            "dev",
        )
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "an expired code cannot be approved"
    );

    // Device state is in the store: another stack on the same store sees it.
    let pending = app.start_device().await;
    let found = app
        .store
        .device_codes()
        .find_by_user_code(pending["user_code"].as_str().expect("code"))
        .await
        .expect("store");
    assert!(found.is_some());
}

#[tokio::test]
async fn login_client_gets_a_token_once_the_code_is_approved() {
    let app = app(true, |c| c.auth.local_issuer.device_poll_interval_secs = 1).await;
    let admin = app.admin_key("acme").await;
    let options = cellgate_auth::login::LoginOptions::new(&app.base);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let login = tokio::spawn(async move {
        cellgate_auth::login::device_login(&options, move |auth| {
            let _ = tx.send((auth.user_code.clone(), auth.instructions()));
        })
        .await
    });
    let (user_code, instructions) = rx.await.expect("instructions shown");
    assert!(
        instructions.contains(&format!("{}/device", app.base)),
        "{instructions}"
    );
    // Approve only after the client has polled at least once.
    let mut polled = false;
    for _ in 0..200 {
        let grant = app
            .store
            .device_codes()
            .find_by_user_code(&user_code)
            .await
            .expect("store")
            .expect("grant");
        if grant.last_poll_at_ms.is_some() {
            polled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(polled, "the client never polled");
    let (status, page) = app.decide(&user_code, &admin, "approve", "dev").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let token = login.await.expect("task").expect("login succeeded");
    assert_eq!(token.token_type, "Bearer");
    let identity = app
        .stack
        .authenticator
        .authenticate_token(token.access_token.expose())
        .await
        .expect("the token is accepted");
    assert_eq!(
        (identity.tenant.as_str(), &*identity.principal.roles),
        ("acme", &["dev".to_owned()][..])
    );
}

#[tokio::test]
async fn login_client_reports_a_denial() {
    let app = app(true, |c| c.auth.local_issuer.device_poll_interval_secs = 1).await;
    let admin = app.admin_key("acme").await;
    let options = cellgate_auth::login::LoginOptions::new(&app.base);
    let client = reqwest::Client::new();
    let authorization = cellgate_auth::login::request_device_code(&client, &options)
        .await
        .expect("code");
    let (status, _) = app
        .decide(&authorization.user_code, &admin, "deny", "")
        .await;
    assert_eq!(status, StatusCode::OK);
    let outcome = cellgate_auth::login::poll_for_token(&client, &options, &authorization).await;
    assert!(
        matches!(outcome, Err(cellgate_auth::login::LoginError::Denied)),
        "{outcome:?}"
    );
}
