//! `users …` and `config check` on files, no server needed.

use crate::support::{USAGE, comfyume};

#[tokio::test]
async fn users_are_added_listed_tokened_imported_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let users = |args: &[&str]| {
        let mut all = vec!["users"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--data-dir", data.as_str()]);
        all.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>, stdin: Option<&'static str>| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        comfyume(&refs, &[], stdin).await
    };

    run(
        users(&["add", "alice", "--password-stdin"]),
        Some("alice-password\n"),
    )
    .await
    .expect(0);
    let again = run(
        users(&["add", "alice", "--password-stdin"]),
        Some("alice-password\n"),
    )
    .await
    .expect(USAGE);
    assert!(again.stderr.contains("already exists"), "{again:?}");
    let short = run(users(&["add", "bob", "--password-stdin"]), Some("short\n"))
        .await
        .expect(USAGE);
    assert!(short.stderr.contains("too short"), "{short:?}");
    let bad = run(users(&["add", "../x", "--password-stdin"]), Some("long enough\n"))
        .await
        .expect(USAGE);
    assert!(bad.stderr.contains("not a valid user name"), "{bad:?}");
    let no_tty = run(users(&["add", "bob"]), None).await.expect(USAGE);
    assert!(no_tty.stderr.contains("--password-stdin"), "{no_tty:?}");
    run(
        users(&["add", "teacher", "--admin", "--password-stdin"]),
        Some("teacher-password\n"),
    )
    .await
    .expect(0);

    let token = run(users(&["token", "alice", "--label", "laptop"]), None)
        .await
        .expect(0);
    assert!(token.stdout.trim().starts_with("cmu_"), "{token:?}");
    let file = std::fs::read_to_string(dir.path().join("users.toml")).unwrap();
    assert!(
        !file.contains(token.stdout.trim()),
        "only the token's hash is stored"
    );
    let list = run(users(&["list"]), None).await.expect(0);
    let alice = list.stdout.lines().find(|l| l.starts_with("alice")).unwrap();
    assert!(
        alice.contains("no") && alice.contains("1 (laptop)"),
        "{}",
        list.stdout
    );
    assert!(
        list.stdout
            .lines()
            .any(|l| l.starts_with("teacher") && l.contains("yes")),
        "{}",
        list.stdout
    );
    let revoked = run(users(&["revoke-tokens", "alice"]), None).await.expect(0);
    assert!(revoked.stderr.contains("revoked 1 token"), "{revoked:?}");
    run(
        users(&["passwd", "alice", "--password-stdin"]),
        Some("a new password\n"),
    )
    .await
    .expect(0);

    // An htpasswd file of bcrypt hashes (here: alice's own hash under another name).
    let hash = file
        .lines()
        .find_map(|l| {
            l.strip_prefix("password = \"")
                .map(|h| h.trim_end_matches('"').to_string())
        })
        .unwrap();
    let htpasswd = dir.path().join("workshop.htpasswd");
    std::fs::write(&htpasswd, format!("# the workshop\ncarol:{hash}\n")).unwrap();
    let imported = run(users(&["import", &htpasswd.display().to_string()]), None)
        .await
        .expect(0);
    assert!(
        imported.stderr.contains("imported 1 user(s)") && imported.stderr.contains("carol"),
        "{imported:?}"
    );
    std::fs::write(&htpasswd, "dave:$apr1$abc$def\n").unwrap();
    let md5 = run(users(&["import", &htpasswd.display().to_string()]), None)
        .await
        .expect(USAGE);
    assert!(md5.stderr.contains("bcrypt"), "{md5:?}");

    run(users(&["remove", "carol"]), None).await.expect(0);
    let missing = run(users(&["remove", "carol"]), None).await.expect(USAGE);
    assert!(missing.stderr.contains("no user 'carol'"), "{missing:?}");
    let list = run(users(&["list"]), None).await.expect(0);
    assert!(!list.stdout.contains("carol"), "{}", list.stdout);
}

#[tokio::test]
async fn config_check_names_the_bad_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.toml");
    std::fs::write(&bad, "[scheduler]\npolicy = \"lottery\"\n").unwrap();
    let run = comfyume(
        &["config", "check", "--config", &bad.display().to_string()],
        &[],
        None,
    )
    .await
    .expect(USAGE);
    assert!(
        run.stderr.contains("scheduler.policy") && run.stderr.contains("broken.toml"),
        "{run:?}"
    );
    let run = comfyume(&["serve", "--config", &bad.display().to_string()], &[], None)
        .await
        .expect(USAGE);
    assert!(
        run.stderr.contains("scheduler.policy"),
        "serve refuses it the same way: {run:?}"
    );

    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "listen = \"0.0.0.0:9000\"\n[scheduler]\npolicy = \"fifo\"\n\n[[providers]]\nkind = \"comfyui\"\n\
         name = \"gpu-box\"\nurls = [\"http://10.0.0.5:8188\", \"http://10.0.0.6:8188\"]\n\
         output_dirs = [\"/mnt/gpu-a/output\", \"\"]\n",
    )
    .unwrap();
    let data = dir.path().join("data").display().to_string();
    let run = comfyume(
        &[
            "config",
            "check",
            "--config",
            &good.display().to_string(),
            "--data-dir",
            &data,
        ],
        &[],
        None,
    )
    .await
    .expect(0);
    for needle in [
        "configuration OK",
        "listen:      http://0.0.0.0:9000",
        "policy:      fifo",
        "gpu-box: ComfyUI x2 (http://10.0.0.5:8188, http://10.0.0.6:8188)",
        "jobs' files deleted once stored from /mnt/gpu-a/output",
        "not there yet",
    ] {
        assert!(run.stdout.contains(needle), "no {needle:?} in:\n{}", run.stdout);
    }
    let missing = dir.path().join("nope.toml").display().to_string();
    let run = comfyume(&["config", "check", "--config", &missing], &[], None)
        .await
        .expect(USAGE);
    assert!(
        run.stderr.contains("nope.toml") && run.stderr.contains("not found"),
        "{run:?}"
    );

    // A Verda deployment in shared-directory mode whose share is not mounted here: `serve` refuses to start
    // (every job would otherwise run to its execution timeout unseen); `config check` names the mode.
    let verda = dir.path().join("verda.toml");
    let absent = dir.path().join("not-mounted").display().to_string();
    std::fs::write(
        &verda,
        format!(
            "[[providers]]\nkind = \"verda\"\nname = \"verda-a\"\nurl = \"http://127.0.0.1:9\"\n\
             api_key_env = \"COMFYUME_TEST_NO_SUCH_KEY\"\noutput_dir = \"{absent}\"\n\n\
             [[providers]]\nkind = \"verda\"\nname = \"verda-b\"\nurl = \"http://127.0.0.1:9\"\n\
             mode = \"async\"\noutput_dir = \"{absent}\"\n"
        ),
    )
    .unwrap();
    let verda = verda.display().to_string();
    let run = comfyume(
        &["config", "check", "--config", &verda, "--data-dir", &data],
        &[],
        None,
    )
    .await
    .expect(0);
    assert!(
        run.stdout.contains("(shared directory ")
            && run.stdout.contains("(async inference to a comfyume agent)"),
        "{run:?}"
    );
    let run = comfyume(
        &[
            "serve",
            "--config",
            &verda,
            "--data-dir",
            &data,
            "--listen",
            "127.0.0.1:0",
        ],
        &[("COMFYUME_TEST_NO_SUCH_KEY", "k")],
        None,
    )
    .await
    .expect(USAGE);
    assert!(
        run.stderr.contains("verda-a") && run.stderr.contains("is not a directory here"),
        "{run:?}"
    );
}
