//! Cloud jobs through the engine survive a crash: recorded, resumed from
//! their checkpoint by a new engine, one pod each. Against the real API
//! server of `scripts/services/kube.sh`, with a kubelet stand-in (there is
//! no kubelet).

#[path = "../../cloud/tests/node/mod.rs"]
mod node;

use std::rc::Rc;
use std::time::{Duration, Instant};

use drover_cloud::{CloudEnv, CloudJob, CloudKind, CloudSpec, CloudState, object_name};
use drover_engine::{Engine, Identity, Job, Kinds};
use drover_store::{Store, decode};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, PostParams};
use tokio::task::LocalSet;

const NS: &str = "drover-engine-test";

fn engine(
    store: Store,
    local: &Rc<LocalSet>,
    dir: &std::path::Path,
    cloud: std::sync::Arc<drover_cloud::Cloud>,
) -> Engine {
    let _ = dir;
    // One engine, restarted after its crash: it takes its own processes back at once.
    let identity = Identity { id: "cloud-test".into(), ..Identity::fresh("daemon") };
    Engine::with_identity(store, local.clone(), Kinds::new().with::<CloudKind>(CloudEnv(Ok(cloud))), identity)
}

#[test]
fn a_cloud_job_resumes_after_an_engine_crash_without_a_second_pod() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let id = format!("crash-{stamp}.job");
    let kubelet_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    kubelet_rt.block_on(async {
        let ns: Namespace = serde_json::from_value(serde_json::json!({ "metadata": { "name": NS } })).unwrap();
        let _ = Api::<Namespace>::all(node::kube_client().await).create(&PostParams::default(), &ns).await;
    });
    let kubelet = kubelet_rt.spawn(async { node::kubelet(node::kube_client().await, NS.to_owned()).await });

    // The first engine starts the job and "crashes" while it runs: its
    // runtime, tasks and cluster client are dropped mid-step.
    {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let local = Rc::new(LocalSet::new());
        local.block_on(&rt, {
            let (local, db, id, dir) = (local.clone(), db.clone(), id.clone(), dir.path().to_path_buf());
            async move {
                let store = Store::open(db.to_str().unwrap()).await.unwrap();
                let cloud = node::cloud(Duration::from_secs(600)).await;
                let e = engine(store.clone(), &local, &dir, cloud);
                let spec = CloudSpec {
                    id: id.clone(),
                    image: "busybox".into(),
                    namespace: Some(NS.into()),
                    env: [("SLEEP_MS".to_owned(), "3000".to_owned()), ("EXIT_CODE".to_owned(), "4".to_owned())].into(),
                    local_dir: dir.join("out"),
                    ..CloudSpec::default()
                };
                e.submit(&id, Job::new::<CloudKind>(&CloudJob { spec })).await.unwrap();
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let stored = store.get(&id).await.unwrap().unwrap();
                    if matches!(decode::<CloudState>(&stored.checkpoint), Ok(CloudState::Running { .. })) {
                        break;
                    }
                    assert!(Instant::now() < deadline, "never running: {}", stored.checkpoint);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
    }

    // A new engine, a new client: it resumes the job from its checkpoint.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let local = Rc::new(LocalSet::new());
    let outcomes = local.block_on(&rt, {
        let (local, db, dir) = (local.clone(), db.clone(), dir.path().to_path_buf());
        async move {
            let store = Store::open(db.to_str().unwrap()).await.unwrap();
            let e = engine(store, &local, &dir, node::cloud(Duration::from_secs(600)).await);
            let recovery = e.recover().await.unwrap();
            assert_eq!(recovery.resumed.len(), 1, "{recovery:?}");
            e.wait_all().await
        }
    });
    assert_eq!(outcomes.len(), 1);
    let name = object_name(&id);
    assert_eq!(outcomes[0].1.state::<CloudKind>(), Some(CloudState::Finished { name: name.clone(), exit_code: 4 }));
    kubelet_rt.block_on(async {
        let client = node::kube_client().await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
        let ours = pods.list(&ListParams::default().labels(&format!("drover.io/object={name}"))).await.unwrap();
        assert_eq!(ours.items.len(), 1, "one pod, not two");
        node::delete_now(&client, NS, &name).await;
    });
    kubelet.abort();
}
