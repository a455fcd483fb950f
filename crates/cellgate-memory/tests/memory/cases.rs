//! Behaviour of the tools on a real store.

use cellgate_kernel::CallContext;
use cellgate_memory::MemoryProvider;
use cellgate_store::{Store, StoreConfig};
use serde_json::{Value, json};

use crate::{as_user, call, call_raw, tenant};

fn names(v: &Value, list: &str, field: &str) -> Vec<String> {
    v[list]
        .as_array()
        .unwrap_or_else(|| panic!("{list} in {v}"))
        .iter()
        .map(|e| e[field].as_str().unwrap_or_default().to_owned())
        .collect()
}

pub async fn kv_versions_ttl_and_categories(store: Store, _: StoreConfig) {
    let t = tenant(&store, "kv").await;
    let p = MemoryProvider::with_defaults(store.clone());
    let ctx = as_user(&t, "alice");
    for v in 1..=13 {
        call(
            &p,
            &ctx,
            "store_memory",
            json!({ "key": "editor", "value": { "name": "helix", "v": v }, "category": "prefs" }),
        )
        .await;
    }
    call(
        &p,
        &ctx,
        "store_memory",
        json!({ "key": "motto", "value": "measure twice", "category": "notes", "tags": ["wood"] }),
    )
    .await;
    let got = call(
        &p,
        &ctx,
        "retrieve_memory",
        json!({ "key": "editor", "versions": true }),
    )
    .await;
    let m = &got["memories"][0];
    assert_eq!(
        (m["version"].clone(), m["value"]["v"].clone()),
        (json!(13), json!(13)),
        "{got}"
    );
    // Ten earlier versions are kept (the default), newest first.
    let versions = m["versions"].as_array().expect("versions");
    assert_eq!(versions.len(), 10, "{got}");
    assert_eq!(versions[0]["version"], 12);
    let cats = call(&p, &ctx, "list_categories", json!({})).await;
    assert_eq!(
        cats["categories"],
        json!([{ "category": "notes", "count": 1 }, { "category": "prefs", "count": 1 }])
    );
    let found = call(
        &p,
        &ctx,
        "retrieve_memory",
        json!({ "query": "measure twice", "limit": 1 }),
    )
    .await;
    assert_eq!(found["memories"][0]["key"], "motto", "{found}");
    let by_cat = call(&p, &ctx, "retrieve_memory", json!({ "category": "prefs" })).await;
    assert_eq!(names(&by_cat, "memories", "key"), ["editor"]);
    assert_eq!(
        call(&p, &ctx, "delete_memory", json!({ "key": "motto" })).await["deleted"],
        true
    );
    assert_eq!(
        call(&p, &ctx, "delete_memory", json!({ "key": "motto" })).await["deleted"],
        false
    );

    // An expired memory is invisible at once and removed by consolidation.
    call(
        &p,
        &ctx,
        "store_memory",
        json!({ "key": "soon", "value": "gone", "category": "tmp", "ttl": 1 }),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        call(&p, &ctx, "retrieve_memory", json!({ "key": "soon" })).await["memories"],
        json!([])
    );
    let counts = call(&p, &ctx, "consolidate_memory", json!({})).await;
    assert_eq!(counts["expiredMemories"], 1, "{counts}");

    // Bad input is refused with the field named.
    for (args, field) in [
        (json!({ "value": 1, "category": "c" }), "key"),
        (
            json!({ "key": "k", "value": 1, "category": "c", "ttl": 0 }),
            "ttl",
        ),
        (
            json!({ "key": "k", "value": 1, "category": "c", "scope": "everyone" }),
            "scope",
        ),
        (json!({ "key": "", "value": 1, "category": "c" }), "key"),
    ] {
        let mut map = serde_json::Map::new();
        if let Value::Object(m) = args {
            map = m;
        }
        let err = cellgate_kernel::Provider::call_tool(p.as_ref(), &ctx, "store_memory", map)
            .await
            .expect_err("invalid arguments");
        assert!(err.message.contains(field), "{field}: {}", err.message);
    }
    let err = cellgate_kernel::Provider::call_tool(
        p.as_ref(),
        &ctx,
        "retrieve_memory",
        serde_json::Map::new(),
    )
    .await
    .expect_err("nothing to retrieve by");
    assert!(err.message.contains("key"), "{}", err.message);
}

pub async fn graph_follows_official_semantics(store: Store, _: StoreConfig) {
    let t = tenant(&store, "graph").await;
    let p = MemoryProvider::with_defaults(store);
    let ctx = as_user(&t, "agent");
    let created = call(
        &p,
        &ctx,
        "create_entities",
        json!({ "entities": [
            { "name": "A", "entityType": "t", "observations": ["one"] },
            { "name": "B", "entityType": "t", "observations": [] }
        ]}),
    )
    .await;
    assert_eq!(names(&created, "entities", "name"), ["A", "B"]);
    let again = call(
        &p,
        &ctx,
        "create_entities",
        json!({ "entities": [{ "name": "A", "entityType": "x", "observations": [] }] }),
    )
    .await;
    assert_eq!(again, json!({ "entities": [] }));
    let rel = call(&p, &ctx, "create_relations", json!({ "relations": [
        { "from": "A", "to": "B", "relationType": "r" }, { "from": "A", "to": "B", "relationType": "r" }
    ]})).await;
    assert_eq!(rel["relations"].as_array().map(Vec::len), Some(1));
    let missing = call_raw(
        &p,
        &ctx,
        "add_observations",
        json!({ "observations": [
            { "entityName": "A", "contents": ["two"] }, { "entityName": "Z", "contents": ["x"] }
        ]}),
    )
    .await;
    assert_eq!(missing["isError"], true);
    assert_eq!(
        missing["content"][0]["text"],
        "Entity with name Z not found"
    );
    // Nothing of the failed call was written.
    let graph = call(&p, &ctx, "read_graph", json!({})).await;
    assert_eq!(graph["entities"][0]["observations"], json!(["one"]));
    let search = call(&p, &ctx, "search_nodes", json!({ "query": "ON" })).await;
    assert_eq!(names(&search, "entities", "name"), ["A"]);
    assert_eq!(search["relations"].as_array().map(Vec::len), Some(1));
    call(&p, &ctx, "delete_entities", json!({ "entityNames": ["B"] })).await;
    assert_eq!(
        call(&p, &ctx, "read_graph", json!({})).await["relations"],
        json!([])
    );
    // The resource shows the shared graph too.
    let res =
        cellgate_kernel::Provider::read_resource(p.as_ref(), &ctx, "memory://knowledge-graph")
            .await
            .expect("resource");
    assert!(
        res["contents"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .contains("\"A\""),
        "{res}"
    );
}

pub async fn tenants_and_private_scopes_are_isolated(store: Store, _: StoreConfig) {
    let acme = tenant(&store, "acme").await;
    let beta = tenant(&store, "beta").await;
    let p = MemoryProvider::with_defaults(store.clone());
    let alice = as_user(&acme, "alice");
    let bob = as_user(&acme, "bob");
    let mallory = as_user(&beta, "alice"); // same principal id, other tenant
    call(&p, &alice, "store_memory", json!({ "key": "secret", "value": "alice diary entry", "category": "diary", "scope": "private" })).await;
    call(
        &p,
        &alice,
        "store_memory",
        json!({ "key": "wiki", "value": "team wiki entry", "category": "docs" }),
    )
    .await;
    call(&p, &alice, "create_entities", json!({ "scope": "private", "entities": [{ "name": "Diary", "entityType": "note", "observations": ["diary entry"] }] })).await;
    call(&p, &alice, "create_entities", json!({ "entities": [{ "name": "Wiki", "entityType": "note", "observations": ["wiki entry"] }] })).await;

    let empty = |v: &Value, list: &str| v[list].as_array().is_some_and(Vec::is_empty);
    for (who, ctx) in [("bob", &bob), ("other tenant", &mallory)] {
        for scope in ["shared", "private", "all"] {
            let r = call(
                &p,
                ctx,
                "retrieve_memory",
                json!({ "key": "secret", "scope": scope }),
            )
            .await;
            assert!(empty(&r, "memories"), "{who} {scope}: {r}");
            let q = call(
                &p,
                ctx,
                "retrieve_memory",
                json!({ "query": "diary entry", "scope": scope }),
            )
            .await;
            assert!(
                q["memories"]
                    .as_array()
                    .is_some_and(|l| l.iter().all(|m| m["key"] != "secret")),
                "{who} {scope}: {q}"
            );
            let g = call(
                &p,
                ctx,
                "search_nodes",
                json!({ "query": "diary", "scope": scope }),
            )
            .await;
            assert!(empty(&g, "entities"), "{who} {scope}: {g}");
            let c = call(
                &p,
                ctx,
                "query_concepts",
                json!({ "text": "diary entry", "scope": scope }),
            )
            .await;
            assert!(
                c["results"]
                    .as_array()
                    .is_some_and(|l| l.iter().all(|e| e["name"] != "Diary")),
                "{who} {scope}: {c}"
            );
        }
    }
    // The other tenant sees none of acme's shared items either.
    let g = call(&p, &mallory, "read_graph", json!({ "scope": "all" })).await;
    assert!(empty(&g, "entities"), "{g}");
    assert!(empty(
        &call(&p, &mallory, "list_categories", json!({ "scope": "all" })).await,
        "categories"
    ));
    // Bob sees the shared part; Alice sees both with `all`.
    assert_eq!(
        names(
            &call(&p, &bob, "read_graph", json!({})).await,
            "entities",
            "name"
        ),
        ["Wiki"]
    );
    assert_eq!(
        names(
            &call(&p, &alice, "read_graph", json!({ "scope": "all" })).await,
            "entities",
            "name"
        ),
        ["Diary", "Wiki"]
    );
    let mine = call(
        &p,
        &alice,
        "retrieve_memory",
        json!({ "key": "secret", "scope": "private" }),
    )
    .await;
    assert_eq!(mine["memories"][0]["scope"], "private");
    // Bob deleting "secret" in his spaces does not touch Alice's.
    call(
        &p,
        &bob,
        "delete_memory",
        json!({ "key": "secret", "scope": "private" }),
    )
    .await;
    assert_eq!(
        call(
            &p,
            &alice,
            "retrieve_memory",
            json!({ "key": "secret", "scope": "private" })
        )
        .await["memories"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    // An anonymous caller has no private space.
    let anon = CallContext::detached(acme.as_str());
    let err = cellgate_kernel::Provider::call_tool(
        p.as_ref(),
        &anon,
        "read_graph",
        json!({ "scope": "private" })
            .as_object()
            .cloned()
            .unwrap_or_default(),
    )
    .await
    .expect_err("anonymous private");
    assert!(err.message.contains("scope"), "{}", err.message);
    // Deleting the tenant removes its memory rows.
    store.tenants().delete(&acme).await.expect("delete tenant");
    let again = tenant(&store, "acme").await;
    let fresh = MemoryProvider::with_defaults(store.clone());
    let g = call(
        &fresh,
        &as_user(&again, "alice"),
        "read_graph",
        json!({ "scope": "all" }),
    )
    .await;
    assert!(empty(&g, "entities"), "{g}");
}

pub async fn concepts_update_discovery_and_subgraph(store: Store, _: StoreConfig) {
    let t = tenant(&store, "concepts").await;
    let p = MemoryProvider::with_defaults(store.clone());
    let ctx = as_user(&t, "agent");
    call(&p, &ctx, "create_entities", json!({ "entities": [
        { "name": "Rust compiler", "entityType": "software", "observations": ["compiles Rust programs to machine code", "uses LLVM"] },
        { "name": "LLVM", "entityType": "software", "observations": ["compiler infrastructure"] },
        { "name": "Kettle", "entityType": "appliance", "observations": ["boils water"] }
    ]})).await;
    call(
        &p,
        &ctx,
        "create_relations",
        json!({ "relations": [{ "from": "Rust compiler", "to": "LLVM", "relationType": "uses" }] }),
    )
    .await;
    // A near-identical concept gets an inferred related_to edge, hidden
    // from the official tools but visible to query_concepts.
    call(&p, &ctx, "create_entities", json!({ "entities": [
        { "name": "Rust compilers", "entityType": "software", "observations": ["compiles Rust programs to machine code", "uses LLVM"] }
    ]})).await;
    let official = call(&p, &ctx, "read_graph", json!({})).await;
    assert_eq!(
        official["relations"].as_array().map(Vec::len),
        Some(1),
        "{official}"
    );
    let q = call(
        &p,
        &ctx,
        "query_concepts",
        json!({ "text": "which program compiles rust code", "top_k": 2, "depth": 1 }),
    )
    .await;
    let top = names(&q, "results", "name");
    assert!(top.iter().any(|n| n.starts_with("Rust compiler")), "{q}");
    let edges = q["subgraph"]["relations"].as_array().expect("relations");
    assert!(
        edges
            .iter()
            .any(|r| r["inferred"] == true && r["relationType"] == "related_to"),
        "{q}"
    );
    assert!(
        names(&q["subgraph"], "entities", "name").contains(&"LLVM".to_owned()),
        "{q}"
    );
    assert!(q["results"][0]["accessCount"].as_i64().is_some());
    // Filters.
    let only = call(
        &p,
        &ctx,
        "query_concepts",
        json!({ "text": "boils water", "filters": { "entityType": "software" } }),
    )
    .await;
    assert!(
        names(&only, "results", "name")
            .iter()
            .all(|n| n != "Kettle"),
        "{only}"
    );
    // update_concept supersedes: the old version stays with valid_to set.
    let updated = call(
        &p,
        &ctx,
        "update_concept",
        json!({ "name": "Kettle", "addObservations": ["has a whistle"], "confidence": 0.7 }),
    )
    .await;
    assert_eq!(
        updated["entity"]["observations"],
        json!(["boils water", "has a whistle"])
    );
    assert_eq!(updated["entity"]["confidence"], 0.7);
    let history = store
        .scope(&t)
        .memory()
        .entity_history(&cellgate_store::Space::Shared, "Kettle")
        .await
        .expect("history");
    assert_eq!(history.len(), 2);
    assert!(history[0].valid_to_ms.is_some() && history[1].valid_to_ms.is_none());
    let found = call(
        &p,
        &ctx,
        "query_concepts",
        json!({ "text": "whistle", "top_k": 1, "depth": 0 }),
    )
    .await;
    assert_eq!(names(&found, "results", "name"), ["Kettle"], "{found}");
    let missing = call_raw(&p, &ctx, "update_concept", json!({ "name": "Nope" })).await;
    assert_eq!(missing["isError"], true);
}

pub async fn consolidation_merges_prunes_and_expires(store: Store, _: StoreConfig) {
    let t = tenant(&store, "consolidate").await;
    let p = MemoryProvider::with_defaults(store.clone());
    let ctx = as_user(&t, "agent");
    call(&p, &ctx, "create_entities", json!({ "entities": [
        { "name": "Project Apollo", "entityType": "project", "observations": ["moon landing programme run by NASA"] },
        { "name": "Sailing club", "entityType": "club", "observations": ["meets on Sundays at the lake"] }
    ]})).await;
    call(&p, &ctx, "create_entities", json!({ "entities": [
        { "name": "Project Apolo", "entityType": "project", "observations": ["moon landing programme run by NASA", "landed in 1969"] }
    ]})).await;
    call(&p, &ctx, "create_relations", json!({ "relations": [{ "from": "Project Apolo", "to": "Sailing club", "relationType": "sponsors" }] })).await;
    let counts = call(
        &p,
        &ctx,
        "consolidate_memory",
        json!({ "mergeThreshold": 0.8, "pruneBelow": 0.99 }),
    )
    .await;
    assert_eq!(counts["mergedEntities"], 1, "{counts}");
    assert!(counts["prunedRelations"].as_u64() >= Some(1), "{counts}");
    let graph = call(&p, &ctx, "read_graph", json!({})).await;
    assert_eq!(
        names(&graph, "entities", "name"),
        ["Project Apollo", "Sailing club"],
        "{graph}"
    );
    assert_eq!(
        graph["entities"][0]["observations"],
        json!(["moon landing programme run by NASA", "landed in 1969"])
    );
    // The duplicate's relation now starts at the kept entity.
    assert_eq!(
        graph["relations"],
        json!([{ "from": "Project Apollo", "to": "Sailing club", "relationType": "sponsors" }])
    );
    let exported = call(&p, &ctx, "export_graph", json!({ "format": "json" })).await;
    let doc: Value =
        serde_json::from_str(exported["data"].as_str().unwrap_or_default()).expect("json export");
    assert_eq!(
        doc["entities"][0]["provenance"][0]["merged"], "Project Apolo",
        "{doc}"
    );
}

pub async fn elevation_redacts_and_drops_identity(store: Store, _: StoreConfig) {
    let t = tenant(&store, "elevate").await;
    let p = MemoryProvider::with_defaults(store.clone());
    let alice = as_user(&t, "alice.smith");
    call(
        &p,
        &alice,
        "store_memory",
        json!({ "scope": "private", "key": "vpn", "category": "howto",
        "value": "Ask alice.smith (alice@example.com, +1 415 555 0100) for the VPN profile" }),
    )
    .await;
    call(&p, &alice, "create_entities", json!({ "scope": "private", "entities": [
        { "name": "VPN", "entityType": "service", "observations": ["admin contact alice@example.com"] },
        { "name": "Office", "entityType": "place", "observations": ["second floor"] }
    ]})).await;
    call(&p, &alice, "create_relations", json!({ "scope": "private", "relations": [{ "from": "VPN", "to": "Office", "relationType": "serves" }] })).await;
    let out = call(
        &p,
        &alice,
        "elevate_knowledge",
        json!({ "ids": ["memory:vpn", "entity:VPN", "entity:Office"] }),
    )
    .await;
    assert!(out["redactions"].as_u64() >= Some(3), "{out}");
    assert_eq!(out["relationsCreated"], 1, "{out}");
    let bob = as_user(&t, "bob");
    let shared = call(&p, &bob, "retrieve_memory", json!({ "key": "vpn" })).await;
    let text = shared["memories"][0]["value"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!text.contains("alice"), "{text}");
    assert!(
        text.contains("[REDACTED:email]") && text.contains("VPN profile"),
        "{text}"
    );
    let provenance = shared["memories"][0]["provenance"].to_string();
    assert!(!provenance.contains("alice"), "{provenance}");
    let graph = call(&p, &bob, "read_graph", json!({})).await;
    assert!(!graph.to_string().contains("alice@example.com"), "{graph}");
    assert_eq!(
        graph["relations"],
        json!([{ "from": "VPN", "to": "Office", "relationType": "serves" }])
    );
    // The private originals are untouched; elevating needs a private item.
    let mine = call(
        &p,
        &alice,
        "retrieve_memory",
        json!({ "key": "vpn", "scope": "private" }),
    )
    .await;
    assert!(
        mine["memories"][0]["value"]
            .as_str()
            .unwrap_or_default()
            .contains("alice@example.com")
    );
    let none = call_raw(
        &p,
        &bob,
        "elevate_knowledge",
        json!({ "ids": ["memory:vpn"] }),
    )
    .await;
    assert_eq!(none["isError"], true, "{none}");
}

pub async fn export_import_round_trips(store: Store, _: StoreConfig) {
    let src = tenant(&store, "src").await;
    let dst = tenant(&store, "dst").await;
    let p = MemoryProvider::with_defaults(store.clone());
    let a = as_user(&src, "agent");
    let b = as_user(&dst, "agent");
    call(
        &p,
        &a,
        "create_entities",
        json!({ "entities": [
            { "name": "X", "entityType": "t", "observations": ["x1", "x2"] },
            { "name": "Y", "entityType": "t", "observations": [] }
        ]}),
    )
    .await;
    call(
        &p,
        &a,
        "create_relations",
        json!({ "relations": [{ "from": "X", "to": "Y", "relationType": "r" }] }),
    )
    .await;
    for format in ["jsonl", "json"] {
        let exported = call(&p, &a, "export_graph", json!({ "format": format })).await;
        let data = exported["data"].as_str().expect("data").to_owned();
        if format == "jsonl" {
            assert_eq!(
                data.lines().next(),
                Some(r#"{"type":"entity","name":"X","entityType":"t","observations":["x1","x2"]}"#)
            );
        }
        let scope = if format == "json" {
            "private"
        } else {
            "shared"
        };
        let counts = call(
            &p,
            &b,
            "import_graph",
            json!({ "format": format, "data": data, "scope": scope }),
        )
        .await;
        assert_eq!(counts["entitiesCreated"], 2, "{format}: {counts}");
        let view = call(&p, &b, "read_graph", json!({ "scope": scope })).await;
        assert_eq!(
            view,
            call(&p, &a, "read_graph", json!({})).await,
            "{format}"
        );
    }
    // Importing again adds only what is missing.
    let more =
        "{\"type\":\"entity\",\"name\":\"X\",\"entityType\":\"t\",\"observations\":[\"x3\"]}";
    let counts = call(
        &p,
        &b,
        "import_graph",
        json!({ "format": "jsonl", "data": more }),
    )
    .await;
    assert_eq!(
        (
            counts["entitiesCreated"].clone(),
            counts["observationsAdded"].clone()
        ),
        (json!(0), json!(1))
    );
    let bad = cellgate_kernel::Provider::call_tool(
        p.as_ref(),
        &b,
        "import_graph",
        json!({ "data": "{not json" })
            .as_object()
            .cloned()
            .unwrap_or_default(),
    )
    .await
    .expect_err("bad data");
    assert!(bad.message.contains("data"), "{}", bad.message);
}

pub async fn bulk_writes_are_searchable(store: Store, _: StoreConfig) {
    use cellgate_memory::SearchMode;
    use cellgate_store::{ItemKind, NewMemory, Space, View};
    let t = tenant(&store, "bulk").await;
    let p = MemoryProvider::with_defaults(store.clone());
    let new = |key: &str, text: &str| NewMemory {
        key: key.into(),
        category: "notes".into(),
        tags: Vec::new(),
        value: json!(text),
        expires_at_ms: None,
        source: None,
        provenance: None,
    };
    let written = p
        .store_memories(
            &t,
            &Space::Shared,
            &[
                new("a", "the kettle is in the blue cupboard"),
                new("b", "parking permit renews in March"),
                new("a", "the kettle moved to the green cupboard"),
            ],
        )
        .await
        .expect("bulk write");
    assert_eq!(written.len(), 3);
    assert_eq!((written[0].version, written[2].version), (1, 2));
    let view = View::only(&Space::Shared);
    for mode in [SearchMode::Text, SearchMode::Vector, SearchMode::Hybrid] {
        let hits = p
            .search(
                &t,
                ItemKind::Memory,
                &view,
                "green cupboard kettle",
                1,
                mode,
            )
            .await
            .expect("search");
        assert_eq!(hits[0].0, written[0].id, "{mode:?}");
    }
    let got = call(
        &p,
        &crate::as_user(&t, "u"),
        "retrieve_memory",
        json!({ "key": "a", "versions": true }),
    )
    .await;
    assert_eq!(
        got["memories"][0]["value"],
        "the kettle moved to the green cupboard"
    );
    assert_eq!(
        got["memories"][0]["versions"][0]["value"],
        "the kettle is in the blue cupboard"
    );
    // A bad item refuses the whole batch, naming the field.
    let err = p
        .store_memories(&t, &Space::Shared, &[new("c", "fine"), new("", "no key")])
        .await
        .expect_err("empty key");
    assert!(err.to_string().contains("key"), "{err}");
    assert!(
        store
            .scope(&t)
            .memory()
            .get_memory(&view, "c")
            .await
            .expect("get")
            .is_none()
    );
}
