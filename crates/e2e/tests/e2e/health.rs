use reqwest::StatusCode;

use crate::helpers::{json_of, Options, Svc, TestApp};

#[tokio::test]
async fn every_listener_has_health_metrics_and_openapi() {
    let app = TestApp::spawn(Options::new()).await;
    let client = app.client();

    for svc in Svc::ALL {
        let name = svc.name();
        for path in ["/health/live", "/health/ready"] {
            let (status, body) =
                json_of(client.get(app.url(svc, path)).send().await.expect("health")).await;
            assert_eq!(status, StatusCode::OK, "{name} {path}: {body}");
            assert_eq!(body["status"], "UP", "{name} {path}: {body}");
        }

        let resp = client
            .get(app.url(svc, "/metrics"))
            .send()
            .await
            .expect("metrics");
        assert_eq!(resp.status(), StatusCode::OK, "{name} /metrics");
        let text = resp.text().await.expect("metrics text");
        assert!(
            text.contains("clairon_http_requests_total"),
            "{name} /metrics lacks clairon_http_requests_total:\n{text}"
        );

        let (status, doc) = json_of(
            client
                .get(app.url(svc, "/api/docs/openapi.json"))
                .send()
                .await
                .expect("openapi"),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{name} openapi: {doc}");
        assert!(
            doc["openapi"].is_string(),
            "{name}: no `openapi` version: {doc}"
        );
        let paths = doc["paths"]
            .as_object()
            .unwrap_or_else(|| panic!("{name}: no `paths`: {doc}"));
        let own_prefix = match svc {
            Svc::Users => "/api/users",
            Svc::Notifications => "/api/notifications",
            Svc::Events => "/api/events",
            Svc::Logs => "/api/logs",
            Svc::Web => "/api/",
        };
        assert!(
            paths.keys().any(|p| p.starts_with(own_prefix)),
            "{name}: the document lists none of its {own_prefix} paths: {:?}",
            paths.keys().collect::<Vec<_>>()
        );
    }
}
