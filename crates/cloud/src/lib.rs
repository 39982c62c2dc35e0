//! Cloud jobs for drover: a container in a Kubernetes pod (or in a batch
//! Job) started on demand, followed to its end, its logs fetched, deleted on
//! kill.
//!
//! - [`Cloud`] is one cluster, with the access `kubectl` would use
//!   (`$KUBECONFIG`, `~/.kube/config`, or the in-cluster service account).
//!   Every process on it follows its object through **one shared watch per
//!   namespace** (pods, and batch Jobs when a process uses them), not a poll
//!   loop per process: the watch lists once, then streams changes, and is
//!   re-established from the last resource version when it ends or breaks
//!   (listing again only when the server says that version is too old).
//! - [`CloudProcess`] goes `Created → Creating{name} → Pending{name} →
//!   Running{name} → Finished{name, exit_code}`, or `Failed{reason,
//!   exit_code}`, or `Killed`. The name is derived from the process id
//!   ([`object_name`]) and `Creating` is recorded before the create, so a
//!   create interrupted by a crash finds its object (by name, checking the
//!   process-id annotation) instead of making a second.
//! - Every object carries the labels `app.kubernetes.io/managed-by=drover`
//!   and `drover.io/object=<name>`, and the process id in the annotation
//!   `drover.io/process-id`.
//! - Requests per job: one create, one log fetch at the end, one delete (on
//!   kill, or by the janitor after [`DEFAULT_CLEANUP_AFTER`]); states come
//!   from the shared watch. A GET is added only after a create that found its
//!   name taken, or for an object the watch has not seen for 10 s.
//! - Kill deletes the pod (or the Job with its pods) and waits for the API to
//!   confirm; if the API cannot be reached, the process ends at once as
//!   `Killed { delete_pending: true }` and the deletion is retried in the
//!   background until confirmed.
//! - Bad input ends the process `Failed` with the API's message (an unknown
//!   namespace, a refused token) or drover's (a malformed image reference,
//!   which the API server does not check); a server that cannot be reached
//!   makes the process pause itself (`Stalled`) after its retries.

mod cloud;
mod kind;
mod process;
mod spec;

pub use cloud::{
    Cloud, CloudError, CloudSettings, DEFAULT_CLEANUP_AFTER, DEFAULT_WATCH_TIMEOUT_SECS, Observed, RequestStats,
};
pub use drover_core::RetryPolicy;
pub use kind::{CloudEnv, CloudJob, CloudKind, settings};
pub use kube::Config;
pub use process::{CloudProcess, CloudState};
pub use spec::{
    COLLECT_AFTER_LABEL, CloudSpec, InvalidSpec, MANAGED_BY, OBJECT_LABEL, PROCESS_ANNOTATION, Quantities, object_name,
};
