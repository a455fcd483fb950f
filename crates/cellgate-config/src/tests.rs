use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn no_file_and_no_environment_gives_the_defaults() {
    let c = Config::load(None, env(&[])).unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.server.listen, "127.0.0.1:8080");
    assert_eq!(c.store.backend, StoreBackend::Sqlite);
    assert!(c.metrics.enabled);
    assert!(!c.demo.enabled);
}

#[test]
fn file_then_environment() {
    let dir = std::env::temp_dir().join(format!("cellgate-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cellgate.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:9000\"\nmax_json_depth = 32\n[demo]\nenabled = true\n",
    )
    .unwrap();
    let c = Config::load(
        Some(&path),
        env(&[
            ("CELLGATE_SERVER_LISTEN", "127.0.0.1:9100"),
            (
                "CELLGATE_SERVER_ALLOWED_ORIGINS",
                "https://a.example, https://b.example",
            ),
            ("CELLGATE_METRICS_ENABLED", "false"),
            ("CELLGATE_DATA_DIR", "/tmp/x"),
            ("CELLGATE_UNRELATED_THING", "ignored"),
            ("OTHER", "ignored"),
        ]),
    )
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(c.server.listen, "127.0.0.1:9100", "environment beats file");
    assert_eq!(c.server.max_json_depth, 32, "file beats default");
    assert_eq!(
        c.server.allowed_origins,
        vec!["https://a.example", "https://b.example"]
    );
    assert!(!c.metrics.enabled);
    assert!(c.demo.enabled);
    assert_eq!(c.data_dir.as_deref(), Some("/tmp/x"));
}

#[test]
fn every_key_has_an_environment_variable() {
    let vars = env_overrides();
    for (var, key) in [
        ("CELLGATE_DATA_DIR", "data_dir"),
        ("CELLGATE_SERVER_MAX_BODY_BYTES", "server.max_body_bytes"),
        ("CELLGATE_STORE_URL", "store.url"),
        ("CELLGATE_STORE_BACKEND", "store.backend"),
        ("CELLGATE_LOG_FORMAT", "log.format"),
        ("CELLGATE_DEMO_ENABLED", "demo.enabled"),
    ] {
        assert!(
            vars.contains(&(var.to_string(), key.to_string())),
            "{var} missing in {vars:?}"
        );
    }
}

#[test]
fn a_bad_environment_value_names_the_variable() {
    let e = Config::load(None, env(&[("CELLGATE_SERVER_MAX_BODY_BYTES", "lots")])).unwrap_err();
    let s = e.to_string();
    assert!(s.contains("CELLGATE_SERVER_MAX_BODY_BYTES"), "{s}");
    assert!(s.contains("server.max_body_bytes"), "{s}");
    let e = Config::load(None, env(&[("CELLGATE_STORE_BACKEND", "mysql")])).unwrap_err();
    assert!(e.to_string().contains("store.backend"), "{e}");
    let e = Config::load(None, env(&[("CELLGATE_DEMO_ENABLED", "maybe")])).unwrap_err();
    assert!(e.to_string().contains("expected true or false"), "{e}");
}

#[test]
fn syntax_errors_have_lines() {
    let d = check_text("[server]\nlisten = \"127.0.0.1:1\"\nmax_body_bytes = = 3\n").unwrap_err();
    assert_eq!(d[0].line, Some(3), "{d:?}");
}

#[test]
fn unknown_keys_and_wrong_types_have_line_and_key() {
    let d = check_text("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n").unwrap_err();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].line, Some(3), "{d:?}");
    assert!(d[0].message.contains("unknown field `lisen`"), "{d:?}");

    let d = check_text("[store]\nmax_connections = \"ten\"\n").unwrap_err();
    assert_eq!(d[0].line, Some(2), "{d:?}");
    assert_eq!(d[0].key.as_deref(), Some("store.max_connections"), "{d:?}");
}

#[test]
fn value_rules_report_every_problem_with_its_line() {
    let text = "data_dir = \"/d\"\n[server]\nlisten = \"everywhere\"\nmax_json_depth = 0\nallowed_origins = [\"https://ok.example\", \"ftp:/x\"]\n[store]\nbackend = \"postgres\"\n";
    let d = check_text(text).unwrap_err();
    let keys: Vec<_> = d.iter().map(|d| (d.key.clone().unwrap(), d.line)).collect();
    assert!(
        keys.contains(&("server.listen".into(), Some(3))),
        "{keys:?}"
    );
    assert!(
        keys.contains(&("server.max_json_depth".into(), Some(4))),
        "{keys:?}"
    );
    assert!(
        keys.contains(&("server.allowed_origins[1]".into(), Some(5))),
        "{keys:?}"
    );
    assert!(
        keys.contains(&("store.url".into(), None)),
        "a missing key has no line: {keys:?}"
    );
    assert_eq!(d.len(), 4, "{d:?}");
    let shown = d[0].to_string();
    assert!(
        shown.starts_with("line 3, column 10: `server.listen`:"),
        "{shown}"
    );
}

#[test]
fn a_good_file_checks_clean() {
    let c = check_text("[server]\nlisten = \"0.0.0.0:80\"\n[store]\nbackend = \"postgres\"\nurl = \"postgres://u:p@h/db\"\n").unwrap();
    assert_eq!(c.store.backend, StoreBackend::Postgres);
    assert_eq!(
        c.redacted_store_location(),
        "postgres postgres://u:***@h/db"
    );
}

#[test]
fn schema_carries_doc_comments_and_defaults() {
    let s = json_schema();
    let text = s.to_string();
    assert!(
        text.contains("Address to listen on"),
        "doc comments become descriptions"
    );
    assert!(
        text.contains("127.0.0.1:8080"),
        "defaults are in the schema"
    );
    assert_eq!(s["title"], "cellgate.toml");
}

#[test]
fn passwords_are_redacted() {
    assert_eq!(
        redact_url_password("postgres://a:b@h:5/d"),
        "postgres://a:***@h:5/d"
    );
    assert_eq!(redact_url_password("postgres://a@h/d"), "postgres://a@h/d");
    assert_eq!(redact_url_password("not a url"), "not a url");
}

#[test]
fn virtual_servers_are_checked_by_key() {
    let good = "[[servers]]\nname = \"docs\"\ntools.include = [\"memory__*\"]\ntools.exclude = [\"memory__delete_*\"]\n";
    let c = check_text(good).unwrap();
    assert_eq!(c.servers[0].tools.exclude, ["memory__delete_*"]);
    let bad = "[[servers]]\nname = \"docs\"\ntools.include = [\"a[b\"]\n\
               [[servers]]\nname = \"DOCS\"\nprompts.include = [\"*\"]\n\
               [[servers]]\nname = \"a/b\"\nresources.include = [\"x y\"]\n\
               [[servers]]\nname = \"empty\"\n";
    let d = check_text(bad).unwrap_err();
    let keys: Vec<_> = d.iter().map(|d| d.key.clone().unwrap()).collect();
    assert_eq!(
        keys,
        [
            "servers[0].tools.include[0]",
            "servers[1].name",
            "servers[2].name",
            "servers[2].resources.include[0]",
            "servers[3]",
        ],
        "{d:?}"
    );
    assert!(d[1].to_string().contains("already declared"), "{}", d[1]);
    assert!(d[4].to_string().contains("includes nothing"), "{}", d[4]);
}

#[test]
fn memory_fusion_defaults_and_rules() {
    let c = check_text("[memory.fusion]\nmethod = \"zscore\"\ndepth = 100\n").unwrap();
    assert_eq!(c.memory.fusion.method, FusionMethod::Zscore);
    assert_eq!(c.memory.fusion.depth, 100);
    assert_eq!(c.memory.fusion.k, 1.0);
    assert!(c.memory.persist_index);
    let d = check_text("[memory.fusion]\nk = -1\ntext_weight = 0\nvector_weight = 0\ndepth = 2\n")
        .unwrap_err();
    let keys: Vec<_> = d.iter().filter_map(|p| p.key.as_deref()).collect();
    assert!(keys.contains(&"memory.fusion.k"), "{d:?}");
    assert!(keys.contains(&"memory.fusion.vector_weight"), "{d:?}");
    assert!(keys.contains(&"memory.fusion.depth"), "{d:?}");
}
