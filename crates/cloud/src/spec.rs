//! What a cloud job runs, and the names and labels of its objects.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The label every object drover makes carries, so that one watch per
/// namespace sees them all.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "drover");
/// The label that names the object a pod belongs to (the pod itself, or its Job).
pub const OBJECT_LABEL: &str = "drover.io/object";
/// The label the janitor puts on an ended object: when (Unix seconds) it may
/// be deleted. Kept in the cluster, it outlives the engine that put it
/// there: any engine's janitor deletes such an object once the time passed
/// and no process follows it.
pub const COLLECT_AFTER_LABEL: &str = "drover.io/collect-after";
/// The annotation that holds the process id in full (label values are limited
/// to 63 characters).
pub const PROCESS_ANNOTATION: &str = "drover.io/process-id";

/// CPU and memory, as Kubernetes quantities (`"500m"`, `"2"`, `"1Gi"`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quantities {
    /// CPU, e.g. `"250m"` or `"2"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// Memory, e.g. `"512Mi"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
}

/// A cloud job: one container in a pod (or in the pod of a batch Job).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudSpec {
    /// The process id: it names the object (see [`object_name`]) and is kept
    /// in an annotation, so that an interrupted create finds its object.
    pub id: String,
    /// The container image.
    pub image: String,
    /// The entrypoint (empty: the image's).
    #[serde(default)]
    pub command: Vec<String>,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Resource requests.
    #[serde(default)]
    pub requests: Quantities,
    /// Resource limits.
    #[serde(default)]
    pub limits: Quantities,
    /// The namespace (default: the cluster configuration's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// More labels on the object (and the pods of a Job).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The service account the pod runs as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// Run as a batch Job (its controller makes the pod, and may retry it
    /// `backoff_limit` times) instead of a bare pod.
    #[serde(default)]
    pub batch_job: bool,
    /// How many times a Job retries a failed pod (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_limit: Option<i32>,
    /// Where the job's logs are written when it ends (`stdout.txt`).
    pub local_dir: PathBuf,
}

/// Why a spec cannot run; says which field and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidSpec {
    /// The field.
    pub field: String,
    /// What is wrong.
    pub problem: String,
}

fn invalid(field: &str, problem: impl Into<String>) -> InvalidSpec {
    InvalidSpec { field: field.to_owned(), problem: problem.into() }
}

impl CloudSpec {
    /// The name of this job's pod or Job.
    pub fn object_name(&self) -> String {
        object_name(&self.id)
    }

    /// Checks what the API server would not (the image reference) and what it
    /// would refuse with a less clear message.
    ///
    /// # Errors
    ///
    /// [`InvalidSpec`], naming the field.
    pub fn validate(&self) -> Result<(), InvalidSpec> {
        if self.id.is_empty() {
            return Err(invalid("id", "is empty"));
        }
        check_image(&self.image)
            .map_err(|p| invalid("image", format!("`{}` is not an image reference: {p}", self.image)))?;
        for (field, q) in [("requests", &self.requests), ("limits", &self.limits)] {
            for (name, value) in [("cpu", &q.cpu), ("memory", &q.memory)] {
                if let Some(v) = value
                    && !is_quantity(v)
                {
                    return Err(invalid(
                        &format!("{field}.{name}"),
                        format!("`{v}` is not a quantity (like 500m, 2, 1Gi)"),
                    ));
                }
            }
        }
        for key in self.labels.keys() {
            if key == MANAGED_BY.0 || key == OBJECT_LABEL || key == COLLECT_AFTER_LABEL {
                return Err(invalid("labels", format!("`{key}` is set by drover")));
            }
        }
        for (key, value) in &self.labels {
            if !is_label_value(value) {
                return Err(invalid("labels", format!("the value of `{key}` is not a label value: `{value}`")));
            }
        }
        if let Some(ns) = &self.namespace
            && !is_dns_label(ns)
        {
            return Err(invalid("namespace", format!("`{ns}` is not a namespace name")));
        }
        if self.backoff_limit.is_some() && !self.batch_job {
            return Err(invalid("backoff_limit", "is for batch jobs (set batch_job)"));
        }
        Ok(())
    }
}

/// The object name for process `id`: `drover-` and the id in DNS-label form,
/// cut to fit, and a hash of the exact id (so that ids that differ only in
/// case or punctuation get different names). At most 63 characters.
pub fn object_name(id: &str) -> String {
    let mut base: String =
        id.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    base.truncate(45);
    let base = base.trim_matches('-');
    format!("drover-{base}-{:08x}", fnv1a(id.as_bytes()) as u32)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric())
}

/// A Kubernetes quantity: a decimal number with an optional suffix.
fn is_quantity(s: &str) -> bool {
    const SUFFIXES: [&str; 13] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T"];
    let number = SUFFIXES.iter().find_map(|suffix| s.strip_suffix(suffix)).unwrap_or(s);
    let number = number.strip_suffix('P').or_else(|| number.strip_suffix('E')).unwrap_or(number);
    let mut parts = number.splitn(2, '.');
    let whole = parts.next().unwrap_or("");
    let frac = parts.next();
    !number.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
        && (!whole.is_empty() || frac.is_some())
}

/// An image reference: `[registry[:port]/]path[:tag][@digest]`, by the
/// grammar of the container runtimes (distribution/reference), as
/// `container_image_dist_ref` parses it: lower-case path components separated
/// by `.`, `_`, `__` or dashes; a tag of word characters, dots and dashes, at
/// most 128; a digest `algorithm:hex`.
fn check_image(image: &str) -> Result<(), String> {
    use container_image_dist_ref::err::Kind;
    let Err(e) = container_image_dist_ref::ImgRef::new(image) else { return Ok(()) };
    // (The error's index is relative to the part that failed, so not shown.)
    let problem = match e.kind() {
        Kind::RefMissing | Kind::HostOrPathMissing if image.is_empty() => return Err("it is empty".into()),
        _ if image.chars().any(char::is_whitespace) => return Err("it contains white space".into()),
        Kind::TagTooLong
        | Kind::TagInvalidChar
        | Kind::TagMissing
        | Kind::PortOrTagMissing
        | Kind::PortOrTagInvalidChar => "a tag is letters, digits, `_`, `.` and `-` (at most 128)",
        Kind::AlgorithmMissing
        | Kind::InvalidOciAlgorithm
        | Kind::AlgorithmInvalidNumericPrefix
        | Kind::OciRegisteredAlgorithmWrongDigestLength
        | Kind::AlgorithmInvalidChar
        | Kind::AlgorithmTooLong
        | Kind::EncodedMissing
        | Kind::EncodedInvalidChar
        | Kind::EncodedNonLowerHex
        | Kind::OciRegisteredDigestInvalidChar
        | Kind::EncodingTooShort
        | Kind::EncodingTooLong => "a digest is `algorithm:hex`, at least 32 hex digits",
        Kind::HostMissing
        | Kind::HostComponentInvalidEnd
        | Kind::HostInvalidChar
        | Kind::HostTooLong
        | Kind::Ipv6InvalidChar
        | Kind::Ipv6TooLong
        | Kind::Ipv6BadColon
        | Kind::Ipv6TooManyHexDigits
        | Kind::Ipv6TooManyGroups
        | Kind::Ipv6TooFewGroups
        | Kind::Ipv6MissingClosingBracket
        | Kind::Port
        | Kind::PortInvalidChar
        | Kind::PortTooLong
        | Kind::PortMissing => "the registry is not a host name with an optional port",
        Kind::NameTooLong | Kind::HostOrPathTooLong | Kind::PathTooLong => "the name is longer than 255 characters",
        _ => "a path component is lower-case letters and digits, separated by `.`, `_` or `-`",
    };
    Err(problem.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        for good in [
            "busybox",
            "busybox:1.36",
            "library/busybox:latest",
            "docker.io/library/python:3.12-slim",
            "localhost:5000/team/app_v2.1:rc-1",
            "ghcr.io/org/img@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "registry.example.org/a/b/c:tag",
            "Registry.Example.org/a__b/c---d",
            "[::1]:5000/img",
            &format!("img:{}", "t".repeat(128)),
        ] {
            assert_eq!(check_image(good), Ok(()), "{good}");
        }
        for bad in
            ["", "Busybox", "busy box", "busybox:", "img:-x", "a//b", "ex ample/x", "x@sha256:zz", "-a/b", "a:b:c"]
        {
            assert!(check_image(bad).is_err(), "{bad}");
        }
        for bad in ["a_.b", "a/-b", &format!("img:{}", "t".repeat(129)), "localhost:x/img"] {
            assert!(check_image(bad).is_err(), "{bad}");
        }
        assert_eq!(check_image(""), Err("it is empty".to_owned()));
        let e = check_image("ok/Bad").unwrap_err();
        assert!(e.starts_with("a path component is lower-case"), "{e}");
        let e = check_image("x@sha256:zz").unwrap_err();
        assert!(e.starts_with("a digest is"), "{e}");
    }

    #[test]
    fn quantities_and_names() {
        for good in ["1", "0.5", "500m", "2Gi", "128Mi", "1.5G", "100k", ".5"] {
            assert!(is_quantity(good), "{good}");
        }
        for bad in ["", "m", "1.", "two", "1 Gi", "1gb", "-1"] {
            assert!(!is_quantity(bad), "{bad}");
        }
        let name = object_name("run-mx54a2zx.quickstart.Hello_World");
        assert!(name.starts_with("drover-run-mx54a2zx-quickstart-hello-world-"), "{name}");
        assert!(is_dns_label(&name) && name.len() <= 63, "{name}");
        assert_ne!(object_name("a.b"), object_name("a-b"));
        let long = object_name(&"x".repeat(300));
        assert!(is_dns_label(&long) && long.len() <= 63, "{long}");
    }

    #[test]
    fn validation_names_the_field() {
        let spec = CloudSpec { id: "p".into(), image: "busybox".into(), ..CloudSpec::default() };
        assert_eq!(spec.validate(), Ok(()));
        let bad = CloudSpec { image: "Not An Image".into(), ..spec.clone() };
        assert_eq!(bad.validate().unwrap_err().field, "image");
        let mut bad = spec.clone();
        bad.limits.memory = Some("lots".into());
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "limits.memory: `lots` is not a quantity (like 500m, 2, 1Gi)"
        );
        let mut bad = spec.clone();
        bad.labels.insert(OBJECT_LABEL.into(), "x".into());
        assert_eq!(bad.validate().unwrap_err().field, "labels");
        let bad = CloudSpec { namespace: Some("No_Such".into()), ..spec };
        assert_eq!(bad.validate().unwrap_err().field, "namespace");
    }
}
