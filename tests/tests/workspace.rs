//! Every user's ComfyUI workspace at `/u/<user>/`: the official frontend's files served by comfyume
//! itself (installed from the pinned wheel), only to the workspace's owner.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use comfyume_server::config::StoreBackend;
use reqwest::StatusCode;
use reqwest::header::{CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE, LOCATION};
use support::{Server, config, credentials, sim};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_frontend_the_workspace_says_how_to_install_one() {
    let dir = tempfile::tempdir().unwrap();
    let worker = sim(Duration::from_millis(10)).await;
    let config = config(dir.path(), StoreBackend::Memory);
    let tokens = credentials(&config);
    let server = Server::start(config, &[worker.base_url()]).await;
    let http = client();
    let resp = http
        .get(format!("{}/u/alice/", server.url))
        .bearer_auth(&tokens["alice"])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let page = resp.text().await.unwrap();
    assert!(page.contains("comfyume frontend install"), "{page}");
    assert!(page.contains("comfyui-frontend-package==1.58.1"), "{page}");
    server.shut_down().await;
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_frontend_is_served_to_its_owner_only_with_compression_and_cache_headers() {
    let frontend = support::frontend::installed();
    let dir = tempfile::tempdir().unwrap();
    let worker = sim(Duration::from_millis(10)).await;
    let mut config = config(dir.path(), StoreBackend::Memory);
    config.workspace.frontend_dir = Some(frontend.clone());
    let tokens = credentials(&config);
    let server = Server::start(config, &[worker.base_url()]).await;
    let http = client();
    let get = |path: &str, who: Option<&str>| {
        let mut req = http.get(format!("{}{path}", server.url));
        if let Some(who) = who {
            req = req.bearer_auth(&tokens[who]);
        }
        req
    };

    // The trailing slash is what makes the frontend's relative paths work.
    let resp = get("/u/alice?x=1", Some("alice")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(resp.headers()[LOCATION], "/u/alice/?x=1");

    // Not logged in: the page sends to the login form, files answer 401.
    let resp = get("/u/alice/", None).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()[LOCATION], "/login?next=%2Fu%2Falice%2F");
    let index = std::fs::read_to_string(frontend.join("index.html")).unwrap();
    let script = index
        .split("src=\"./")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    assert!(script.starts_with("assets/index-"), "{script}");
    let resp = get(&format!("/u/alice/{script}"), None).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // Someone else's workspace: refused, admins included.
    for who in ["bob", "teacher"] {
        for path in ["/u/alice/".to_string(), format!("/u/alice/{script}")] {
            let resp = get(&path, Some(who)).send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{path} as {who}");
        }
    }

    // The owner gets the page (revalidated every time) and the build files (kept for a year, gzip).
    let resp = get("/u/alice/", Some("alice")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[CACHE_CONTROL], "no-cache");
    assert!(
        resp.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert_eq!(resp.text().await.unwrap(), index);
    let resp = get(&format!("/u/alice/{script}"), Some("alice"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[CONTENT_ENCODING], "gzip");
    assert!(
        resp.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .contains("javascript")
    );
    assert_eq!(
        resp.headers()[CACHE_CONTROL],
        "public, max-age=31536000, immutable"
    );
    let plain = get(&format!("/u/alice/{script}"), Some("alice"))
        .send()
        .await
        .unwrap();
    assert!(plain.headers().get(CONTENT_ENCODING).is_none());
    assert_eq!(
        plain.bytes().await.unwrap().len() as u64,
        std::fs::metadata(frontend.join(&script)).unwrap().len()
    );
    let resp = get("/u/alice/extensions/core/groupNode.js", Some("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[CACHE_CONTROL], "no-cache");

    // A missing file (and any path escaping the directory) is an empty 404, as ComfyUI answers.
    for path in [
        "/u/alice/no-such.js",
        "/u/alice/..%2F..%2Fusers.toml",
        "/u/alice/assets%2F..%2F..%2F..%2Fusers.toml",
    ] {
        let resp = get(path, Some("alice")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
        assert!(resp.bytes().await.unwrap().is_empty());
    }

    // The images the frontend asks for at the root are served there, to anyone.
    for path in ["/assets/favicon.ico", "/assets/images/comfy-logo-single.svg"] {
        let resp = get(path, None).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }
    server.shut_down().await;
    worker.shutdown().await;
}
