//! Envoy's gRPC ext_authz over real sockets (TCP and a Unix socket), with a
//! `tonic` client speaking `envoy.service.auth.v3.Authorization/Check` as
//! Envoy does: every reason of every decision fixture, bad identifiers, a
//! missing header, an unknown service, `context_extensions`, not ready →
//! `UNAVAILABLE`, and `grpc.health.v1.Health` before and after the first
//! snapshot.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request as AttrRequest};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use guardian_access::clock::Clock;
use guardian_access::core::time::{Instant, parse_instant, stockholm};
use guardian_access::fixtures::Scenario;
use guardian_access::http::check::State;
use guardian_access::http::grpc::{self, GrpcListener};
use guardian_access::http::listener::ListenerConfig;
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A gRPC server on a detached check state, and a channel to it.
struct Running {
    state: Arc<State>,
    clock: Clock,
    channel: Channel,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Running {
    async fn start(unix: bool) -> Running {
        let clock = Clock::manual(Instant::from_timestamp("2026-11-23T09:00:00Z".parse().unwrap()).unwrap());
        let state = Arc::new(State::detached(ListenerConfig::default(), "test", clock.clone()));
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("grpc.sock");
        let (listener, channel) = if unix {
            let l = tokio::net::UnixListener::bind(&socket).unwrap();
            let path = socket.clone();
            // The URI is not used: every connection goes to the socket.
            let channel = Endpoint::try_from("http://[::1]:50051")
                .unwrap()
                .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
                }));
            (GrpcListener::Unix(l), channel)
        } else {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let channel = Endpoint::try_from(format!("http://{addr}")).unwrap().connect_lazy();
            (GrpcListener::Tcp(l), channel)
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let served = grpc::run(listener, state.clone(), async {
            let _ = stopped.await;
        });
        let task = tokio::spawn(async move { served.await.unwrap() });
        Running {
            state,
            clock,
            channel,
            stop: Some(stop),
            task,
            _dir: dir,
        }
    }

    async fn check(&self, headers: &[(&str, &str)], context: &[(&str, &str)]) -> Result<CheckResponse, tonic::Status> {
        let req = CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(AttrRequest {
                    http: Some(HttpRequest {
                        method: "GET".into(),
                        path: "/journal".into(),
                        headers: headers.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                context_extensions: context.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
                ..Default::default()
            }),
        };
        AuthorizationClient::new(self.channel.clone())
            .check(req)
            .await
            .map(tonic::Response::into_inner)
    }

    async fn health(&self, service: &str) -> ServingStatus {
        let r = HealthClient::new(self.channel.clone())
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        ServingStatus::try_from(r.status).unwrap()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap();
    }
}

/// The status code and the headers of an answer.
fn parts(r: &CheckResponse) -> (i32, HashMap<String, String>, Option<u32>, String) {
    let code = r.status.as_ref().map_or(0, |s| s.code);
    let (headers, http, body) = match &r.http_response {
        Some(HttpResponse::OkResponse(ok)) => (&ok.headers, None, String::new()),
        Some(HttpResponse::DeniedResponse(d)) => (
            &d.headers,
            d.status.as_ref().map(|s| u32::try_from(s.code).unwrap()),
            d.body.clone(),
        ),
        _ => panic!("no http response: {r:?}"),
    };
    let h = headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect();
    (code, h, http, body)
}

const OK: i32 = 0;
const INVALID_ARGUMENT: i32 = 3;
const PERMISSION_DENIED: i32 = 7;

fn ask<'a>(actor: &'a str, subject: &'a str, service: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![("x-actor-id", actor), ("x-subject-id", subject), ("x-service", service)]
}

#[tokio::test]
async fn every_decision_fixture_gets_the_same_answer_over_grpc() {
    let s = Running::start(false).await;
    let tz = stockholm().unwrap();
    let mut files: Vec<_> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/decisions"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.push(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/demo.json").into());
    let mut reasons = std::collections::BTreeSet::new();
    let mut asked = 0;
    for file in files {
        let scenario = Scenario::load(&file).unwrap();
        s.state.cell.publish(scenario.snapshot().unwrap());
        for case in &scenario.cases {
            // The question has no instant over gRPC: it is asked "now".
            s.clock.set(parse_instant(&case.at, &tz).unwrap());
            let r = s
                .check(&ask(&case.actor, &case.subject, &case.service), &[])
                .await
                .unwrap();
            let (code, headers, http, _) = parts(&r);
            let want = &case.expect;
            let allowed = want["decision"] == "allow";
            assert_eq!(code, if allowed { OK } else { PERMISSION_DENIED }, "{}", case.name);
            assert_eq!(http, if allowed { None } else { Some(403) }, "{}", case.name);
            let reason = want["reason"].as_str().unwrap();
            assert_eq!(headers["x-access-reason"], reason, "{}", case.name);
            assert_eq!(headers["x-access-revision"], "1", "{}", case.name);
            if let Some(until) = want.get("valid_until") {
                assert_eq!(
                    headers.get("x-access-valid-until").map(String::as_str),
                    until.as_str(),
                    "{}",
                    case.name
                );
            }
            reasons.insert(reason.to_owned());
            asked += 1;
        }
    }
    // Every reason of SPEC §3.
    for reason in [
        "guardian",
        "extended_access",
        "own_access",
        "early_access",
        "not_guardian",
        "protected_subject",
        "protected_guardian",
        "unknown_age",
        "aged_out",
        "sealed",
        "blocked",
        "below_age",
    ] {
        assert!(reasons.contains(reason), "no fixture case answers `{reason}`");
    }
    assert!(asked > 50, "{asked}");
    s.stop().await;
}

#[tokio::test]
async fn bad_questions_are_invalid_arguments_naming_the_field_never_the_value() {
    let s = Running::start(false).await;
    s.state.cell.publish(Scenario::demo().unwrap().snapshot().unwrap());
    let cases = [
        (ask("198001032385", "2018010123", "journal"), "subject"),
        (vec![("x-actor-id", "198001032385")], "subject"),
        (ask("198001032385", "201801012392", "mail"), "service"),
        (
            vec![("x-actor-id", "197701012382"), ("x-subject-id", "201509162390")],
            "service",
        ),
    ];
    for (headers, field) in cases {
        let r = s.check(&headers, &[]).await.unwrap();
        let (code, _, http, body) = parts(&r);
        assert_eq!((code, http), (INVALID_ARGUMENT, Some(400)), "{headers:?}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["field"], field, "{body}");
        let message = r.status.unwrap().message;
        assert!(
            !message.contains("2018010123") && !body.contains("2018010123"),
            "{message} {body}"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn the_route_names_the_service_and_wins_over_the_header() {
    let s = Running::start(false).await;
    s.state.cell.publish(Scenario::demo().unwrap().snapshot().unwrap());
    // The demo's seal covers the journal only.
    let headers = vec![("x-actor-id", "197701022381"), ("x-subject-id", "201406012383")];
    let journal = s.check(&headers, &[("service", "journal")]).await.unwrap();
    assert_eq!(parts(&journal).1["x-access-reason"], "sealed");
    let mut with_header = headers.clone();
    with_header.push(("x-service", "journal"));
    let eservices = s.check(&with_header, &[("service", "eservices")]).await.unwrap();
    let journal_by_header = s.check(&with_header, &[]).await.unwrap();
    assert_eq!(parts(&journal_by_header).1["x-access-reason"], "sealed");
    assert_ne!(
        parts(&eservices).1["x-access-reason"],
        "sealed",
        "the route's service wins"
    );
    s.stop().await;
}

#[tokio::test]
async fn not_ready_is_unavailable_and_health_follows_readiness() {
    for unix in [false, true] {
        let s = Running::start(unix).await;
        let e = s
            .check(&ask("197701012382", "201509162390", "journal"), &[])
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable, "unix: {unix}");
        assert!(!e.message().contains("201509162390"));
        for service in ["", "envoy.service.auth.v3.Authorization"] {
            assert_eq!(s.health(service).await, ServingStatus::NotServing, "unix: {unix}");
        }
        s.state.cell.publish(Scenario::demo().unwrap().snapshot().unwrap());
        let mut serving = false;
        for _ in 0..100 {
            if s.health("").await == ServingStatus::Serving {
                serving = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(serving, "health follows the first snapshot (unix: {unix})");
        assert_eq!(
            s.health("envoy.service.auth.v3.Authorization").await,
            ServingStatus::Serving
        );
        let r = s
            .check(&ask("197701012382", "201509162390", "journal"), &[])
            .await
            .unwrap();
        let (code, headers, _, _) = parts(&r);
        assert_eq!(
            (code, headers["x-access-reason"].as_str()),
            (OK, "guardian"),
            "unix: {unix}"
        );
        assert_eq!(headers["x-access-valid-until"], "2028-09-16T00:00:00+02:00");
        s.stop().await;
    }
}
