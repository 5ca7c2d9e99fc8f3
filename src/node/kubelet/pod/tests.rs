//! The pod worker's state machine against the fakes of `cri::fake`: restart policies and the
//! back-off, init containers, image pull failures, start failures, graceful stops, a stop
//! during a pull, adoption after an agent restart and a lost shim. No root, no images, no
//! processes: time moves only when a test moves it.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use super::{CState, NodeContext, PodView, Worker};
use crate::api::pod::{PodPhase, TerminatedReason, WaitingReason};
use crate::node::kubelet::cri::fake::{
    FakeClock, FakeImages, FakeNetwork, FakeProber, FakeRuntime,
};
use crate::node::kubelet::manifests::PodManifest;
use crate::node::safefs::Beneath;

struct Bed {
    _dir: tempfile::TempDir,
    clock: Arc<FakeClock>,
    images: Arc<FakeImages>,
    runtime: Arc<FakeRuntime>,
    network: Arc<FakeNetwork>,
    prober: Arc<FakeProber>,
    ctx: Arc<NodeContext>,
    _changed: OwnedFd,
}

impl Bed {
    fn new() -> Bed {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = FakeClock::new();
        let images = Arc::new(FakeImages::default());
        let runtime = Arc::new(FakeRuntime::new(clock.clone()));
        let network = Arc::new(FakeNetwork::default());
        let prober = Arc::new(FakeProber::default());
        let (root, run_dir, log_dir) = (
            dir.path().join("root"),
            dir.path().join("run"),
            dir.path().join("logs"),
        );
        let (changed_r, changed_w) = rustix::pipe::pipe_with(
            rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
        )
        .expect("pipe");
        let ctx = Arc::new(NodeContext {
            images: images.clone(),
            runtime: runtime.clone(),
            network: Some(network.clone()),
            clock: clock.clone(),
            run: Beneath::open(&run_dir, 0o700).expect("run"),
            state: Beneath::open(&root, 0o700).expect("state"),
            logs: Beneath::open(&log_dir, 0o750).expect("logs"),
            root,
            run_dir,
            log_dir,
            node_name: "node-1".into(),
            objects: Default::default(),
            changed: changed_w,
            cgroups: None,
            prober: prober.clone(),
        });
        Bed {
            _dir: dir,
            clock,
            images,
            runtime,
            network,
            prober,
            ctx,
            _changed: changed_r,
        }
    }

    /// A worker for `spec` (a PodSpec), its view shared with the test.
    fn worker(&self, spec: serde_json::Value) -> (Worker, Arc<Mutex<PodView>>) {
        let pod = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web", "namespace": "default", "uid": "uid-1"},
            "spec": spec,
        }))
        .expect("pod");
        let pm = PodManifest {
            pod,
            namespace: "default".into(),
            name: "web".into(),
            uid: "uid-1".into(),
            file: "web.yaml".into(),
            warnings: vec![],
            invalid: None,
        };
        let view = Arc::new(Mutex::new(crate::node::kubelet::new_view(
            &self.ctx,
            Arc::new(pm),
        )));
        let w = Worker::new(self.ctx.clone(), view.clone()).expect("worker");
        (w, view)
    }

    fn pod_dir_exists(&self) -> bool {
        self.ctx.run.path().join("pods/uid-1").exists()
    }
}

/// One pass of the worker's loop (without its wait).
fn pass(w: &mut Worker) {
    w.step();
    w.publish();
    w.persist();
}

/// Waits (bounded) for the pulls in flight to end, then passes.
fn after_pulls(w: &mut Worker) {
    let mut polls: Vec<_> = w
        .pulls
        .values()
        .map(|j| rustix::event::PollFd::new(&j.done, rustix::event::PollFlags::IN))
        .collect();
    for p in polls.iter_mut() {
        let one = std::slice::from_mut(p);
        let ten = rustix::event::Timespec {
            tv_sec: 10,
            tv_nsec: 0,
        };
        assert_eq!(
            rustix::event::poll(one, Some(&ten)).expect("poll"),
            1,
            "a pull hangs"
        );
    }
    drop(polls);
    pass(w);
}

fn app(name: &str, image: &str) -> serde_json::Value {
    json!({"name": name, "image": image})
}

fn state(v: &Arc<Mutex<PodView>>, i: usize) -> CState {
    v.lock().unwrap().containers[i].state.clone()
}

fn waiting(v: &Arc<Mutex<PodView>>, i: usize) -> Option<(WaitingReason, String)> {
    match state(v, i) {
        CState::Waiting { reason, message } => Some((reason, message)),
        _ => None,
    }
}

fn running(v: &Arc<Mutex<PodView>>, i: usize) -> bool {
    matches!(state(v, i), CState::Running { .. })
}

fn phase(v: &Arc<Mutex<PodView>>) -> PodPhase {
    v.lock().unwrap().phase
}

fn events(v: &Arc<Mutex<PodView>>, reason: &str) -> Vec<String> {
    v.lock()
        .unwrap()
        .events
        .iter()
        .filter(|e| e.reason == reason)
        .map(|e| e.message.clone())
        .collect()
}

#[test]
fn always_restarts_with_a_back_off_doubling_to_five_minutes_reset_after_ten() {
    let bed = Bed::new();
    bed.images.add("img:1");
    let (mut w, v) = bed.worker(json!({"containers": [app("app", "img:1")]}));
    w.adopt();
    pass(&mut w);
    assert_eq!(bed.runtime.starts(), ["app"]);
    assert_eq!(phase(&v), PodPhase::Running);
    assert!(v.lock().unwrap().ready());
    // The first exit restarts at once (and arms the back-off).
    bed.runtime.exit("app", 1);
    pass(&mut w);
    assert_eq!(bed.runtime.starts().len(), 2);
    assert_eq!(v.lock().unwrap().containers[0].restart_count, 1);
    let last = v.lock().unwrap().containers[0].last_state.clone();
    assert!(
        matches!(
            last,
            Some(CState::Terminated {
                exit_code: 1,
                reason: TerminatedReason::Error,
                ..
            })
        ),
        "{last:?}"
    );
    // Then 10 s, 20 s, ... at most 300 s.
    for (n, secs) in [10u64, 20, 40, 80, 160, 300, 300].into_iter().enumerate() {
        let starts = bed.runtime.starts().len();
        bed.clock.advance(Duration::from_secs(1));
        bed.runtime.exit("app", 2);
        pass(&mut w);
        let (reason, message) = waiting(&v, 0).expect("waiting");
        assert_eq!(reason, WaitingReason::CrashLoopBackOff, "exit {n}");
        assert!(
            message.starts_with(&format!(
                "back-off {secs}s restarting failed container=app pod=web_default(uid-1)"
            )),
            "{message}"
        );
        assert!(!v.lock().unwrap().ready());
        bed.clock.advance(Duration::from_secs(secs - 1));
        pass(&mut w);
        assert_eq!(
            bed.runtime.starts().len(),
            starts,
            "restarted before its back-off ended"
        );
        bed.clock.advance(Duration::from_secs(1));
        pass(&mut w);
        assert_eq!(
            bed.runtime.starts().len(),
            starts + 1,
            "not restarted after {secs}s"
        );
        assert!(running(&v, 0));
    }
    assert_eq!(v.lock().unwrap().containers[0].restart_count, 8);
    // Ten minutes of running: the next exit restarts at once again.
    bed.clock.advance(Duration::from_secs(600));
    bed.runtime.exit("app", 1);
    let starts = bed.runtime.starts().len();
    pass(&mut w);
    assert_eq!(
        bed.runtime.starts().len(),
        starts + 1,
        "the back-off was not reset"
    );
    assert!(running(&v, 0));
}

#[test]
fn on_failure_restarts_failures_only_and_never_restarts_nothing() {
    for (policy, code, restarted, phase_after) in [
        ("OnFailure", 0, false, PodPhase::Succeeded),
        ("OnFailure", 3, true, PodPhase::Running),
        ("Never", 0, false, PodPhase::Succeeded),
        ("Never", 3, false, PodPhase::Failed),
        ("Always", 0, true, PodPhase::Running),
    ] {
        let bed = Bed::new();
        bed.images.add("img:1");
        let (mut w, v) = bed.worker(json!({
            "restartPolicy": policy,
            "containers": [app("app", "img:1")],
        }));
        pass(&mut w);
        bed.runtime.exit("app", code);
        pass(&mut w);
        let starts = bed.runtime.starts().len();
        assert_eq!(starts == 2, restarted, "{policy} after exit {code}");
        assert_eq!(phase(&v), phase_after, "{policy} after exit {code}");
        if !restarted {
            let reason = if code == 0 {
                TerminatedReason::Completed
            } else {
                TerminatedReason::Error
            };
            assert!(
                matches!(state(&v, 0), CState::Terminated { exit_code, reason: r, .. } if exit_code == code && r == reason),
                "{:?}",
                state(&v, 0)
            );
        }
    }
}

#[test]
fn init_containers_run_one_at_a_time_before_the_apps() {
    let bed = Bed::new();
    bed.images.add("img:1");
    let (mut w, v) = bed.worker(json!({
        "initContainers": [app("a", "img:1"), app("b", "img:1")],
        "containers": [app("c", "img:1")],
    }));
    pass(&mut w);
    assert_eq!(bed.runtime.starts(), ["a"]);
    assert_eq!(
        waiting(&v, 2).expect("c waits").0,
        WaitingReason::PodInitializing
    );
    assert_eq!(phase(&v), PodPhase::Pending);
    bed.runtime.exit("a", 0);
    pass(&mut w);
    assert_eq!(bed.runtime.starts(), ["a", "b"]);
    bed.runtime.exit("b", 0);
    pass(&mut w);
    assert_eq!(bed.runtime.starts(), ["a", "b", "c"]);
    assert_eq!(phase(&v), PodPhase::Running);
    // Completed init containers stay completed when the app restarts.
    bed.runtime.exit("c", 1);
    pass(&mut w);
    assert_eq!(bed.runtime.starts(), ["a", "b", "c", "c"]);
}

#[test]
fn a_failed_init_container_fails_the_pod_or_is_retried() {
    // Never: the pod fails and its apps never start.
    let bed = Bed::new();
    bed.images.add("img:1");
    let (mut w, v) = bed.worker(json!({
        "restartPolicy": "Never",
        "initContainers": [app("a", "img:1")],
        "containers": [app("c", "img:1")],
    }));
    pass(&mut w);
    bed.runtime.exit("a", 1);
    pass(&mut w);
    pass(&mut w);
    assert_eq!(bed.runtime.starts(), ["a"]);
    assert_eq!(phase(&v), PodPhase::Failed);
    // Always (OnFailure for init containers): it is retried, the apps wait.
    let bed = Bed::new();
    bed.images.add("img:1");
    let (mut w, v) = bed.worker(json!({
        "initContainers": [app("a", "img:1")],
        "containers": [app("c", "img:1")],
    }));
    pass(&mut w);
    bed.runtime.exit("a", 1);
    pass(&mut w);
    assert_eq!(bed.runtime.starts(), ["a", "a"]);
    assert_eq!(phase(&v), PodPhase::Pending);
    bed.runtime.exit("a", 0);
    pass(&mut w);
    assert_eq!(bed.runtime.starts(), ["a", "a", "c"]);
}

#[test]
fn pull_failures_are_err_image_pull_then_image_pull_back_off() {
    let bed = Bed::new();
    bed.images
        .fail("reg.example/app:1", 2, "connection refused");
    let (mut w, v) = bed.worker(json!({"containers": [app("app", "reg.example/app:1")]}));
    pass(&mut w);
    assert_eq!(w.pulls.len(), 1);
    let (reason, message) = waiting(&v, 0).expect("waiting");
    assert_eq!(reason, WaitingReason::ContainerCreating);
    assert!(message.contains("pulling image"), "{message}");
    after_pulls(&mut w);
    let (reason, message) = waiting(&v, 0).expect("waiting");
    assert_eq!(reason, WaitingReason::ErrImagePull);
    assert!(message.contains("connection refused"), "{message}");
    assert_eq!(events(&v, "Failed").len(), 1);
    // 10 s later: pulled again, failed again: ImagePullBackOff, then 20 s.
    bed.clock.advance(Duration::from_secs(9));
    pass(&mut w);
    assert!(w.pulls.is_empty(), "pulled again before the back-off ended");
    bed.clock.advance(Duration::from_secs(1));
    pass(&mut w);
    assert_eq!(w.pulls.len(), 1);
    after_pulls(&mut w);
    assert_eq!(
        waiting(&v, 0).expect("waiting").0,
        WaitingReason::ImagePullBackOff
    );
    bed.clock.advance(Duration::from_secs(19));
    pass(&mut w);
    assert!(w.pulls.is_empty());
    bed.clock.advance(Duration::from_secs(1));
    pass(&mut w);
    assert_eq!(w.pulls.len(), 1);
    after_pulls(&mut w);
    assert_eq!(bed.images.pulls_started(), 3);
    assert_eq!(bed.runtime.starts(), ["app"]);
    assert!(running(&v, 0));
    assert_eq!(
        events(&v, "Pulled").len(),
        1,
        "{:?}",
        v.lock().unwrap().events
    );
    // A finished pull's job goes (its readable descriptor would wake the worker forever).
    assert!(w.pulls.is_empty());
}

#[test]
fn a_start_failure_waits_out_a_back_off() {
    let bed = Bed::new();
    bed.images.add("img:1");
    bed.runtime.fail_starts(Some("exec: no such file"));
    let (mut w, v) = bed.worker(json!({"containers": [app("app", "img:1")]}));
    pass(&mut w);
    let (reason, message) = waiting(&v, 0).expect("waiting");
    assert_eq!(reason, WaitingReason::CreateContainerError);
    assert!(message.contains("no such file"), "{message}");
    bed.runtime.fail_starts(None);
    pass(&mut w);
    assert!(
        bed.runtime.starts().is_empty(),
        "retried before its back-off"
    );
    bed.clock.advance(Duration::from_secs(10));
    pass(&mut w);
    assert_eq!(bed.runtime.starts(), ["app"]);
}

#[test]
fn run_as_non_root_refuses_an_image_running_as_root() {
    let bed = Bed::new();
    bed.images.set_user("img:1", "0");
    let (mut w, v) = bed.worker(json!({
        "securityContext": {"runAsNonRoot": true},
        "containers": [app("app", "img:1")],
    }));
    pass(&mut w);
    let (reason, message) = waiting(&v, 0).expect("waiting");
    assert_eq!(reason, WaitingReason::CreateContainerConfigError);
    assert!(
        message.starts_with("container has runAsNonRoot and image will run as root"),
        "{message}"
    );
    assert!(bed.runtime.starts().is_empty());
}

#[test]
fn a_stop_gives_every_container_its_grace_period_and_removes_the_pod() {
    let bed = Bed::new();
    bed.images.add("img:1");
    let (mut w, v) = bed.worker(json!({
        "terminationGracePeriodSeconds": 7,
        "containers": [app("a", "img:1"), app("b", "img:1")],
    }));
    pass(&mut w);
    assert_eq!(bed.runtime.sandboxes(), 1);
    assert_eq!(bed.network.attached(), 1);
    assert_eq!(v.lock().unwrap().pod_ip.as_deref(), Some("10.88.0.2"));
    assert!(bed.pod_dir_exists());
    assert_eq!(bed.runtime.leases(), 2);
    w.teardown();
    let mut stops = bed.runtime.stops();
    stops.sort();
    assert_eq!(
        stops,
        [
            ("a".to_string(), Duration::from_secs(7)),
            ("b".to_string(), Duration::from_secs(7))
        ]
    );
    assert!(v.lock().unwrap().deleting);
    assert_eq!(bed.runtime.sandboxes(), 0, "sandbox left");
    assert_eq!(bed.network.attached(), 0, "address left");
    assert_eq!(bed.runtime.leases(), 0, "image leases left");
    assert!(!bed.pod_dir_exists(), "pod directory left");
}

#[test]
fn a_stop_during_an_image_pull_does_not_wait_for_it() {
    let bed = Bed::new();
    bed.images.hold();
    let (w, _v) = bed.worker(json!({"containers": [app("app", "reg.example/slow:1")]}));
    let (stop_tx, stop_rx) = std::sync::mpsc::channel();
    let (wake_r, wake_w) = rustix::pipe::pipe_with(
        rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
    )
    .expect("pipe");
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        w.run(stop_rx, wake_r);
        let _ = done_tx.send(());
    });
    bed.images.wait_pulls_started(1);
    stop_tx.send(()).expect("stop");
    rustix::io::write(&wake_w, b"x").expect("wake");
    let stopped = done_rx.recv_timeout(Duration::from_secs(30));
    // Let the pull end either way, so that nothing is left hanging.
    bed.images.release();
    assert!(stopped.is_ok(), "the worker waited for the pull");
    t.join().expect("worker");
    assert!(bed.runtime.starts().is_empty());
    assert!(!bed.pod_dir_exists(), "pod directory left");
    assert_eq!(bed.runtime.sandboxes(), 0);
}

#[test]
fn a_restarted_agent_adopts_running_containers_and_their_counts() {
    let bed = Bed::new();
    bed.images.add("img:1");
    let spec = json!({"containers": [app("app", "img:1")]});
    let (mut w, v) = bed.worker(spec.clone());
    pass(&mut w);
    bed.runtime.exit("app", 1);
    pass(&mut w);
    assert_eq!(bed.runtime.starts().len(), 2);
    let created = v.lock().unwrap().created;
    // The agent dies: its worker is gone without a teardown.
    drop(w);
    bed.clock.advance(Duration::from_secs(30));
    let (mut w, v) = bed.worker(spec);
    w.adopt();
    pass(&mut w);
    assert_eq!(
        bed.runtime.starts().len(),
        2,
        "an adopted container was started again"
    );
    assert!(running(&v, 0));
    assert_eq!(v.lock().unwrap().containers[0].restart_count, 1);
    assert_eq!(
        v.lock().unwrap().created,
        created,
        "creationTimestamp changed"
    );
    assert_eq!(v.lock().unwrap().pod_ip.as_deref(), Some("10.88.0.2"));
    assert_eq!(bed.runtime.sandboxes(), 1, "a second sandbox was made");
    // Its back-off is remembered too: the next exit waits 10 s.
    bed.runtime.exit("app", 1);
    pass(&mut w);
    assert_eq!(
        waiting(&v, 0).expect("waiting").0,
        WaitingReason::CrashLoopBackOff
    );
}

#[test]
fn an_adopted_pod_whose_network_is_gone_is_attached_again() {
    let bed = Bed::new();
    bed.images.add("img:1");
    let spec = json!({"containers": [app("app", "img:1")]});
    let (mut w, _v) = bed.worker(spec.clone());
    pass(&mut w);
    drop(w);
    bed.network.break_links();
    let (mut w, v) = bed.worker(spec);
    w.adopt();
    assert_eq!(v.lock().unwrap().pod_ip, None);
    pass(&mut w);
    assert_eq!(v.lock().unwrap().pod_ip.as_deref(), Some("10.88.0.3"));
    assert_eq!(events(&v, "NetworkRepaired").len(), 1);
    assert_eq!(bed.runtime.starts().len(), 1, "the container was restarted");
}

#[test]
fn a_lost_shim_is_reported_once_and_its_container_still_stopped() {
    let bed = Bed::new();
    bed.images.add("img:1");
    let (mut w, v) = bed.worker(json!({
        "terminationGracePeriodSeconds": 3,
        "containers": [app("app", "img:1")],
    }));
    pass(&mut w);
    bed.runtime.lose_shim("app");
    pass(&mut w);
    pass(&mut w);
    assert_eq!(events(&v, "ShimLost").len(), 1);
    assert!(running(&v, 0), "a container whose shim is gone still runs");
    assert_eq!(bed.runtime.starts().len(), 1);
    bed.runtime.stubborn("app");
    w.teardown();
    assert_eq!(
        bed.runtime.stops(),
        [("app".to_string(), Duration::from_secs(3))]
    );
    assert!(!bed.runtime.running("app"));
}

#[test]
fn a_missing_config_map_blocks_the_pod_with_one_event_and_a_retry() {
    let bed = Bed::new();
    bed.images.add("img:1");
    let (mut w, v) = bed.worker(json!({
        "volumes": [{"name": "cfg", "configMap": {"name": "absent"}}],
        "containers": [{"name": "app", "image": "img:1",
                        "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]}],
    }));
    pass(&mut w);
    pass(&mut w);
    let (reason, message) = waiting(&v, 0).expect("waiting");
    assert_eq!(
        (reason, message.as_str()),
        (WaitingReason::ContainerCreating, "waiting for volumes")
    );
    let failed = events(&v, "FailedMount");
    assert_eq!(
        failed.len(),
        1,
        "one event per distinct message: {failed:?}"
    );
    assert!(
        failed[0].contains("configmap \"absent\" not found"),
        "{failed:?}"
    );
    assert_eq!(
        v.lock().unwrap().message.as_deref(),
        Some(failed[0].as_str())
    );
    assert!(bed.runtime.starts().is_empty());
    // Not retried before 2 s; a start waits for the volume.
    use crate::node::kubelet::cri::Clock;
    assert!(w.ctrs[0].not_before.is_some_and(|t| t > bed.clock.now()));
}

fn ready(v: &Arc<Mutex<PodView>>) -> (bool, bool) {
    let v = v.lock().unwrap();
    (v.containers[0].ready, v.ready())
}

/// A readiness probe: not ready until it succeeds, not ready again after its failure
/// threshold, each failure an Unhealthy event. A liveness probe waits its initial delay;
/// its third failure stops the container (Killing, the probe's grace period) and the
/// restart policy starts it again, with new probes.
#[test]
fn readiness_gates_the_pod_and_liveness_failures_restart_the_container() {
    let bed = Bed::new();
    bed.images.add("img:1");
    let (mut w, v) = bed.worker(json!({"containers": [{
        "name": "app", "image": "img:1",
        "readinessProbe": {"exec": {"command": ["ready"]}, "periodSeconds": 1, "failureThreshold": 2},
        "livenessProbe": {"tcpSocket": {"port": 80}, "initialDelaySeconds": 5, "periodSeconds": 1,
                          "terminationGracePeriodSeconds": 7},
    }]}));
    w.adopt();
    pass(&mut w);
    assert!(running(&v, 0));
    assert_eq!(ready(&v), (false, false), "not ready before a success");
    assert_eq!(bed.prober.runs(), [("app".into(), "exec".into())]);
    pass(&mut w);
    assert_eq!(ready(&v), (true, true));
    // Two failures in a row: not ready.
    bed.prober.set("app", "exec", Err("not yet".into()));
    for n in 1..=2 {
        bed.clock.advance(Duration::from_secs(1));
        pass(&mut w);
        pass(&mut w);
        assert_eq!(ready(&v).0, n < 2, "after {n} failures");
    }
    assert_eq!(
        events(&v, "Unhealthy"),
        ["Readiness probe failed: not yet"; 2]
    );
    // No liveness run before its initial delay.
    assert!(!bed.prober.runs().iter().any(|(_, a)| a == "tcp"));
    bed.prober
        .set("app", "tcp", Err("connection refused".into()));
    bed.clock.advance(Duration::from_secs(2));
    pass(&mut w);
    assert!(!bed.prober.runs().iter().any(|(_, a)| a == "tcp"), "4 s in");
    for _ in 0..3 {
        bed.clock.advance(Duration::from_secs(1));
        pass(&mut w);
        pass(&mut w);
    }
    assert_eq!(
        events(&v, "Killing"),
        ["Container app failed liveness probe, will be restarted"]
    );
    assert_eq!(
        events(&v, "Unhealthy")
            .iter()
            .filter(|e| e.starts_with("Liveness probe failed: connection refused"))
            .count(),
        3
    );
    let killer = w.ctrs[0].probes.as_mut().unwrap().killing.take().unwrap();
    assert!(killer.join().unwrap());
    assert_eq!(
        bed.runtime.stops(),
        [("app".to_string(), Duration::from_secs(7))]
    );
    pass(&mut w);
    assert_eq!(v.lock().unwrap().containers[0].restart_count, 1);
    assert!(running(&v, 0));
    assert_eq!(ready(&v), (false, false), "a new run starts unready");
}

/// A startup probe holds the other probes back, and the container is not started (nor
/// ready) until it succeeds.
#[test]
fn a_startup_probe_holds_liveness_and_readiness_back() {
    let bed = Bed::new();
    bed.images.add("img:1");
    let (mut w, v) = bed.worker(json!({"containers": [{
        "name": "app", "image": "img:1",
        "startupProbe": {"httpGet": {"port": 8080}, "periodSeconds": 1, "failureThreshold": 30},
        "readinessProbe": {"exec": {"command": ["ready"]}, "periodSeconds": 1},
    }]}));
    bed.prober.set(
        "app",
        "http",
        Err("HTTP probe failed with statuscode: 503".into()),
    );
    w.adopt();
    for _ in 0..3 {
        pass(&mut w);
        pass(&mut w);
        bed.clock.advance(Duration::from_secs(1));
    }
    assert_eq!(
        bed.prober.runs(),
        vec![("app".to_string(), "http".to_string()); 3]
    );
    assert!(!v.lock().unwrap().containers[0].started);
    assert_eq!(ready(&v), (false, false));
    bed.prober.set("app", "http", Ok(()));
    pass(&mut w);
    pass(&mut w);
    assert!(v.lock().unwrap().containers[0].started);
    pass(&mut w);
    pass(&mut w);
    assert_eq!(ready(&v), (true, true));
    let runs = bed.prober.runs();
    assert_eq!(
        runs.iter().filter(|(_, a)| a == "http").count(),
        4,
        "{runs:?}"
    );
    assert!(runs.iter().any(|(_, a)| a == "exec"));
}

/// postStart runs right after the start and holds the container back (not started, no
/// probes) until it ends; a failing one stops the container (FailedPostStartHook) and the
/// restart policy starts it again. preStop runs before the stop of a pod's deletion.
#[test]
fn lifecycle_hooks_run_around_the_container() {
    let bed = Bed::new();
    bed.images.add("img:1");
    let (mut w, v) = bed.worker(json!({"terminationGracePeriodSeconds": 9, "containers": [{
        "name": "app", "image": "img:1",
        "lifecycle": {"postStart": {"exec": {"command": ["setup"]}},
                      "preStop": {"httpGet": {"port": 8080, "path": "/quit"}}},
        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
    }]}));
    bed.prober
        .set("app", "exec", Err("setup: not found".into()));
    w.adopt();
    // The hook starts with the container (and fails at once here).
    pass(&mut w);
    assert_eq!(bed.prober.runs()[0], ("app".into(), "exec".into()));
    assert!(!v.lock().unwrap().containers[0].started);
    assert_eq!(
        events(&v, "FailedPostStartHook"),
        ["PostStartHook failed: setup: not found"]
    );
    let killer = w.ctrs[0].probes.as_mut().unwrap().killing.take().unwrap();
    assert!(killer.join().unwrap());
    // The kill ran the preStop hook first, within the pod's grace period.
    assert_eq!(
        bed.prober.runs().last().unwrap(),
        &("app".into(), "http".into())
    );
    assert_eq!(bed.runtime.stops()[0].0, "app");
    assert!(
        !bed.prober.runs().iter().any(|(_, a)| a == "tcp"),
        "no probe before postStart ends"
    );
    // Restarted; this time the hook succeeds and the probes follow.
    bed.prober.set("app", "exec", Ok(()));
    pass(&mut w);
    assert_eq!(v.lock().unwrap().containers[0].restart_count, 1);
    pass(&mut w);
    assert!(v.lock().unwrap().containers[0].started);
    pass(&mut w);
    pass(&mut w);
    assert_eq!(ready(&v), (true, true));
    // Deletion: preStop, then the stop.
    let runs = bed.prober.runs().len();
    w.teardown();
    let after = bed.prober.runs();
    assert_eq!(after[runs..], [("app".to_string(), "http".to_string())]);
    assert_eq!(bed.runtime.stops().len(), 2);
}
