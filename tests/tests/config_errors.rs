//! A bad config stops a daemon at once, with an error that names the file,
//! the key and what was expected.

use tend_e2e::run_daemon as run;

#[test]
fn the_master_names_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("master.toml");
    std::fs::write(
        &cfg,
        "event_endpoint = \"tcp://127.0.0.1:1\"\nevnt_endpoint = \"x\"\n",
    )
    .unwrap();
    let (code, err) = run("tend-master", &cfg, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("master.toml") && err.contains("evnt_endpoint") && err.contains("expected"),
        "{err}"
    );

    std::fs::write(&cfg, "heartbeat_ms = \"fast\"\n").unwrap();
    let (code, err) = run("tend-master", &cfg, &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("heartbeat_ms") && err.contains("expected"),
        "{err}"
    );

    std::fs::write(&cfg, "event_endpoint = \"udp://x\"\n").unwrap();
    let (_, err) = run("tend-master", &cfg, &[]);
    assert!(
        err.contains("event_endpoint") && err.contains("tcp://"),
        "{err}"
    );

    // A bad rule file is caught by --check-config, naming file and rule.
    std::fs::write(&cfg, "reactor_dir = \"rules\"\n").unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::write(
        dir.path().join("rules/r.toml"),
        "[[rule]]\nname = \"oops\"\non = \"x\"\nwhen = \"event.data.kind ==\"\n[[rule.action]]\napply = [\"s\"]\n",
    )
    .unwrap();
    let (code, err) = run("tend-master", &cfg, &["--check-config"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("r.toml") && err.contains("oops") && err.contains("when"),
        "{err}"
    );

    let (code, err) = run("tend-master", &dir.path().join("missing.toml"), &[]);
    assert_eq!(code, 2);
    assert!(err.contains("missing.toml"), "{err}");
}

#[test]
fn the_minion_names_the_file_the_beacon_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("minion.toml");
    std::fs::write(&cfg, "id = \"web1\"\nmaster_timeot_ms = 5\n").unwrap();
    let (code, err) = run("tend-minion", &cfg, &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("minion.toml") && err.contains("master_timeot_ms"),
        "{err}"
    );

    std::fs::write(&cfg, "id = \"../etc\"\n").unwrap();
    let (code, err) = run("tend-minion", &cfg, &[]);
    assert_eq!(code, 2);
    assert!(err.contains("`id`") && err.contains("../etc"), "{err}");

    std::fs::write(
        &cfg,
        "id = \"web1\"\n[[beacon]]\nname = \"motd\"\ntype = \"file\"\npaths = [\"/etc/motd\"]\ncoalesce = 3\n",
    )
    .unwrap();
    let (code, err) = run("tend-minion", &cfg, &["--check-config"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("minion.toml") && err.contains("\"motd\"") && err.contains("coalesce"),
        "{err}"
    );

    std::fs::write(
        &cfg,
        "id = \"web1\"\n[[beacon]]\nname = \"x\"\ntype = \"telepathy\"\n",
    )
    .unwrap();
    let (_, err) = run("tend-minion", &cfg, &["--check-config"]);
    assert!(err.contains("unknown beacon type \"telepathy\""), "{err}");

    // At startup too, not only with --check-config: a threshold out of
    // range, a bad glob.
    for (beacon, key) in [
        ("name = \"cpu\"\ntype = \"cpu\"\nabove = 150\n", "above"),
        (
            "name = \"cpu\"\ntype = \"disk\"\nmounts = [\"/v[ar\"]\n",
            "mounts",
        ),
        (
            "name = \"cpu\"\ntype = \"file\"\npaths = [\"/etc\"]\nexclude = [\"a[\"]\n",
            "exclude",
        ),
    ] {
        std::fs::write(&cfg, format!("id = \"web1\"\n[[beacon]]\n{beacon}")).unwrap();
        let (code, err) = run("tend-minion", &cfg, &[]);
        assert_ne!(code, 0, "{err}");
        assert!(
            err.contains("minion.toml") && err.contains("beacon \"cpu\"") && err.contains(key),
            "{beacon:?}: {err}"
        );
    }

    std::fs::write(
        &cfg,
        "id = \"web1\"\n[[beacon]]\nname = \"x\"\ntype = \"file\"\npaths = [\"/tmp\"]\n",
    )
    .unwrap();
    let (code, err) = run("tend-minion", &cfg, &["--check-config"]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn the_example_and_container_configs_are_valid() {
    let top = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for dir in ["configs", "deploy/container", "deploy/container/ha"] {
        for (program, file) in [
            ("tend-master", "master.toml"),
            ("tend-minion", "minion.toml"),
        ] {
            let (code, err) = run(program, &top.join(dir).join(file), &["--check-config"]);
            assert_eq!(code, 0, "{dir}/{file}: {err}");
        }
    }
    // The container recipe copies what exists, and the compose file runs a
    // master and three minions from that image.
    let dockerfile = std::fs::read_to_string(top.join("deploy/Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("COPY deploy/container/") && top.join("deploy/container").is_dir(),
        "the Dockerfile copies the container configs"
    );
    let compose = std::fs::read_to_string(top.join("deploy/compose.yaml")).unwrap();
    for service in ["  master:", "  web1:", "  web2:", "  db1:"] {
        assert!(compose.contains(service), "compose.yaml has {service}");
    }
    assert!(compose.contains("dockerfile: deploy/Dockerfile"));
    // The same for several masters on PostgreSQL (docs/ha.md).
    let ha = std::fs::read_to_string(top.join("deploy/compose-ha.yaml")).unwrap();
    for service in [
        "  postgres:",
        "  master1:",
        "  master2:",
        "  master3:",
        "  web1:",
    ] {
        assert!(ha.contains(service), "compose-ha.yaml has {service}");
    }
    assert!(ha.contains("/etc/tend/ha/master.toml") && ha.contains("/etc/tend/ha/minion.toml"));
}

#[test]
fn check_config_reads_the_whole_state_tree_and_reports_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("master.toml");
    std::fs::write(
        &cfg,
        "state_root = \"states\"\nreactor_dir = \"rules\"\ndata_dir = \"data\"\nrun_dir = \"run\"\n",
    )
    .unwrap();
    let states = dir.path().join("states");
    std::fs::create_dir_all(states.join("files")).unwrap();
    std::fs::create_dir_all(states.join("web")).unwrap();
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    let write = |rel: &str, text: &str| std::fs::write(dir.path().join(rel), text).unwrap();
    write("states/files/motd", "hello {{ minion }}\n");
    // A source that is itself TOML, and not a state file: not checked as one.
    write("states/files/app.toml", "port = 80\n");
    write(
        "states/motd.toml",
        "[motd]\ntype = \"file.managed\"\npath = \"/etc/motd\"\nsource = \"files/motd\"\ntemplate = true\n",
    );
    write(
        "states/web/nginx.toml",
        "[nginx]\ntype = \"pkg.installed\"\nname = \"nginx\"\n",
    );
    write(
        "states/top.toml",
        "[[target]]\nmatch = \"web*\"\nstates = [\"motd\", \"web.nginx\"]\n",
    );
    write(
        "rules/r.toml",
        "[[rule]]\nname = \"restore\"\non = \"minion/*/beacon/motd/*\"\n[[rule.action]]\napply = [\"motd\"]\n",
    );
    let (code, err) = run("tend-master", &cfg, &["--check-config"]);
    assert_eq!(code, 0, "a good tree passes: {err}");

    // Now break it five ways; every one is reported, each with its file.
    write(
        "states/web/nginx.toml",
        "[nginx]\ntype = \"pkg.installed\"\nname = \"nginx\"\nversoin = \"1\"\n",
    );
    write(
        "states/motd.toml",
        "[motd]\ntype = \"file.managed\"\npath = \"/etc/motd\"\nsource = \"files/motd\"\ntemplate = true\n\
         [banner]\ntype = \"file.managed\"\npath = \"/etc/issue\"\nsource = \"files/missing\"\n",
    );
    write("states/files/motd", "hello {{ minion \n");
    write(
        "states/top.toml",
        "[[target]]\nmatch = \"web*\"\nstates = [\"motd\", \"db\"]\n",
    );
    write(
        "rules/r.toml",
        "[[rule]]\nname = \"restore\"\non = \"minion/*/beacon/motd/*\"\n[[rule.action]]\napply = [\"gone\"]\n",
    );
    let (code, err) = run("tend-master", &cfg, &["--check-config"]);
    assert_ne!(code, 0, "a broken tree fails: {err}");
    for want in [
        "web/nginx.toml",
        "versoin",
        "files/missing",
        "motd.toml: state \"motd\": template",
        "state \"db\" not found",
        "state \"gone\" not found",
        "problem(s) in the state tree",
    ] {
        assert!(
            err.contains(want),
            "--check-config reports {want:?}:\n{err}"
        );
    }
}
