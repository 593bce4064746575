//! The runtime's half of the protocol: the `CNI_*` environment variables,
//! each checked before it is used in any name or path.

use std::{ffi::OsString, path::PathBuf};

use super::{
    config::is_plain_name,
    error::{BAD_ENVIRONMENT, CniError, CniResult},
};
use crate::agent::bindings::Pod;

/// The commands of the specification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn name(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }
}

/// What one attachment (container id, interface name) is, from the environment.
#[derive(Clone, Debug)]
pub struct Invocation {
    pub container_id: String,
    pub ifname: String,
    /// CNI_NETNS: required for ADD and CHECK, may be empty for DEL.
    pub netns: Option<PathBuf>,
    /// The Kubernetes pod, when the runtime names one in CNI_ARGS.
    pub pod: Option<Pod>,
}

/// The environment, read through `var` (the process's, or a test's).
pub struct Env {
    pub command: Command,
    /// Present for ADD, DEL and CHECK.
    pub invocation: Option<Invocation>,
    /// CNI_PATH, where delegated plugins are looked for.
    pub path: Vec<PathBuf>,
}

fn bad(msg: String) -> CniError {
    CniError::new(BAD_ENVIRONMENT, msg)
}

/// Longest container id accepted: it becomes part of file names.
const CONTAINER_ID_MAX: usize = 1024;

pub fn container_id_error(id: &str) -> Option<String> {
    if id.is_empty() {
        return Some("CNI_CONTAINERID is empty".into());
    }
    if id.len() > CONTAINER_ID_MAX {
        return Some(format!(
            "CNI_CONTAINERID is longer than {CONTAINER_ID_MAX} bytes"
        ));
    }
    (!is_plain_name(id)).then(|| {
        format!(
            "CNI_CONTAINERID {id:?} is not a container id (a letter or digit, then letters, digits, '_', '.' or '-')"
        )
    })
}

pub fn ifname_error(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("CNI_IFNAME is empty".into());
    }
    if name.len() > 15 {
        return Some(format!(
            "CNI_IFNAME {name:?} is {} bytes: an interface name holds at most 15",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Some(format!("CNI_IFNAME {name:?} is not an interface name"));
    }
    name.chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
        .map(|c| format!("CNI_IFNAME {name:?} contains {c:?}, which an interface name may not"))
}

/// The keys of CNI_ARGS the plugin knows: the convention's `IgnoreUnknown`
/// and what kubelet passes through the runtime (containerd, CRI-O).
const KNOWN_ARGS: [&str; 5] = [
    "IgnoreUnknown",
    "K8S_POD_NAMESPACE",
    "K8S_POD_NAME",
    "K8S_POD_UID",
    "K8S_POD_INFRA_CONTAINER_ID",
];

/// Longest pod namespace, name or UID accepted (a DNS subdomain's length;
/// Podman passes container names, which are not DNS names, so only the
/// length and the characters that would garble `show` are checked).
const POD_FIELD_MAX: usize = 253;

/// The pod named by CNI_ARGS (`KEY=VALUE;...`), as libcni's convention reads
/// it: every pair has a `=`, and a key the plugin does not know is refused
/// unless `IgnoreUnknown` is `1` or `true`. No pod without a name.
pub fn pod_from_args(args: &str) -> Result<Option<Pod>, String> {
    let mut pairs = Vec::new();
    for pair in args.split(';').filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("CNI_ARGS pair {pair:?} is not KEY=VALUE"))?;
        pairs.push((key, value));
    }
    let value = |key: &str| pairs.iter().rev().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let ignore_unknown = match value("IgnoreUnknown") {
        None => false,
        Some(v) if v == "1" || v.eq_ignore_ascii_case("true") => true,
        Some(v) if v == "0" || v.eq_ignore_ascii_case("false") => false,
        Some(v) => {
            return Err(format!(
                "CNI_ARGS IgnoreUnknown={v:?} is not 1, 0, true or false"
            ));
        }
    };
    if !ignore_unknown && let Some((key, _)) = pairs.iter().find(|(k, _)| !KNOWN_ARGS.contains(k)) {
        return Err(format!(
            "CNI_ARGS names {key:?}, which the plugin does not know (IgnoreUnknown=1 lets it pass)"
        ));
    }
    let field = |key: &str| -> Result<Option<String>, String> {
        let Some(v) = value(key).filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        if v.len() > POD_FIELD_MAX {
            return Err(format!(
                "CNI_ARGS {key} is longer than {POD_FIELD_MAX} bytes"
            ));
        }
        if let Some(c) = v
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || *c == '/')
        {
            return Err(format!("CNI_ARGS {key}={v:?} contains {c:?}"));
        }
        Ok(Some(v.to_string()))
    };
    let (namespace, name, uid) = (
        field("K8S_POD_NAMESPACE")?,
        field("K8S_POD_NAME")?,
        field("K8S_POD_UID")?,
    );
    // Podman passes its container's name as K8S_POD_NAME, without a namespace.
    Ok(name.map(|name| Pod {
        namespace: namespace.unwrap_or_default(),
        name,
        uid,
    }))
}

impl Env {
    pub fn read(var: impl Fn(&str) -> Option<OsString>) -> CniResult<Self> {
        let text = |name: &str| -> CniResult<Option<String>> {
            match var(name) {
                None => Ok(None),
                Some(value) => value
                    .into_string()
                    .map(Some)
                    .map_err(|_| bad(format!("{name} is not valid UTF-8"))),
            }
        };
        let command = match text("CNI_COMMAND")?.as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("VERSION") => Command::Version,
            Some("STATUS") => Command::Status,
            Some("GC") => Command::Gc,
            Some(other) => {
                return Err(bad(format!(
                    "CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, VERSION, STATUS, GC"
                )));
            }
            None => return Err(bad("CNI_COMMAND is not set".into())),
        };
        let path = text("CNI_PATH")?
            .map(|p| {
                p.split(':')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();
        let invocation = match command {
            Command::Add | Command::Del | Command::Check => {
                let container_id = text("CNI_CONTAINERID")?
                    .ok_or_else(|| bad("CNI_CONTAINERID is not set".into()))?;
                if let Some(e) = container_id_error(&container_id) {
                    return Err(bad(e));
                }
                let ifname =
                    text("CNI_IFNAME")?.ok_or_else(|| bad("CNI_IFNAME is not set".into()))?;
                if let Some(e) = ifname_error(&ifname) {
                    return Err(bad(e));
                }
                let netns = text("CNI_NETNS")?
                    .filter(|n| !n.is_empty())
                    .map(PathBuf::from);
                if netns.is_none() && command != Command::Del {
                    return Err(bad(format!(
                        "CNI_NETNS is not set (needed by {})",
                        command.name()
                    )));
                }
                if let Some(path) = &netns
                    && !path.is_absolute()
                {
                    return Err(bad(format!(
                        "CNI_NETNS {} is not an absolute path",
                        path.display()
                    )));
                }
                // A DEL never fails on CNI_ARGS: the runtime would retry it forever.
                let pod = match pod_from_args(text("CNI_ARGS")?.as_deref().unwrap_or_default()) {
                    Ok(pod) => pod,
                    Err(_) if command == Command::Del => None,
                    Err(e) => return Err(bad(e)),
                };
                Some(Invocation {
                    container_id,
                    ifname,
                    netns,
                    pod,
                })
            }
            _ => None,
        };
        Ok(Self {
            command,
            invocation,
            path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> CniResult<Env> {
        Env::read(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        })
    }

    const GOOD: [(&str, &str); 4] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c0ffee_1.x-y"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", "/run/netns/c1"),
    ];

    fn with(key: &str, value: Option<&str>) -> CniResult<Env> {
        let mut vars: Vec<(&str, &str)> = GOOD.iter().copied().filter(|(k, _)| *k != key).collect();
        if let Some(v) = value {
            vars.push((key, v));
        }
        env(&vars)
    }

    #[test]
    fn a_good_environment_is_read() {
        let read = env(&GOOD).unwrap();
        assert_eq!(read.command, Command::Add);
        let inv = read.invocation.unwrap();
        assert_eq!(
            (inv.container_id.as_str(), inv.ifname.as_str()),
            ("c0ffee_1.x-y", "eth0")
        );
    }

    #[test]
    fn every_bad_variable_is_refused_with_code_4_and_named() {
        let long = "x".repeat(16);
        let huge = "a".repeat(1025);
        let cases: Vec<(&str, Option<&str>, &str)> = vec![
            ("CNI_COMMAND", None, "CNI_COMMAND is not set"),
            ("CNI_COMMAND", Some("add"), "CNI_COMMAND \"add\""),
            ("CNI_CONTAINERID", None, "CNI_CONTAINERID is not set"),
            ("CNI_CONTAINERID", Some(""), "CNI_CONTAINERID is empty"),
            (
                "CNI_CONTAINERID",
                Some("../etc"),
                "CNI_CONTAINERID \"../etc\"",
            ),
            ("CNI_CONTAINERID", Some("-x"), "CNI_CONTAINERID \"-x\""),
            ("CNI_CONTAINERID", Some("a b"), "CNI_CONTAINERID \"a b\""),
            ("CNI_CONTAINERID", Some(&huge), "longer than 1024"),
            ("CNI_IFNAME", None, "CNI_IFNAME is not set"),
            ("CNI_IFNAME", Some(""), "CNI_IFNAME is empty"),
            ("CNI_IFNAME", Some(&long), "16 bytes"),
            ("CNI_IFNAME", Some(".."), "not an interface name"),
            ("CNI_IFNAME", Some("a/b"), "'/'"),
            ("CNI_IFNAME", Some("a:b"), "':'"),
            ("CNI_IFNAME", Some("a b"), "' '"),
            ("CNI_NETNS", None, "CNI_NETNS is not set"),
            ("CNI_NETNS", Some("run/netns/x"), "not an absolute path"),
        ];
        for (key, value, needle) in cases {
            let e = with(key, value)
                .err()
                .unwrap_or_else(|| panic!("{key}={value:?} accepted"));
            assert_eq!(e.code, 4, "{key}={value:?}");
            assert!(
                e.msg.contains(needle),
                "{key}={value:?}: {} lacks {needle}",
                e.msg
            );
        }
    }

    #[test]
    fn kubelets_pod_arguments_name_the_pod() {
        let mut vars = GOOD.to_vec();
        vars.push((
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=c0ffee_1.x-y;K8S_POD_UID=9d7c1a52-4e2b-4f0c-8a57-0c3b2f1e6d11;FOO=bar",
        ));
        let pod = env(&vars).unwrap().invocation.unwrap().pod;
        assert_eq!(
            pod,
            Some(Pod {
                namespace: "default".into(),
                name: "web-0".into(),
                uid: Some("9d7c1a52-4e2b-4f0c-8a57-0c3b2f1e6d11".into()),
            })
        );
        assert_eq!(pod.unwrap().to_string(), "default/web-0");
        // Names that are not DNS names pass (a runtime's own names); no UID: none.
        assert_eq!(
            pod_from_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=Web_1;K8S_POD_NAME=Web_1")
                .unwrap()
                .map(|p| (p.to_string(), p.uid)),
            Some(("Web_1/Web_1".into(), None))
        );
        assert_eq!(pod_from_args(""), Ok(None));
        assert_eq!(pod_from_args("K8S_POD_NAMESPACE=default"), Ok(None));
        // Podman 4.3's: its container's name, no namespace.
        let podman = "IgnoreUnknown=1;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=c1";
        assert_eq!(
            pod_from_args(podman).unwrap().map(|p| p.to_string()),
            Some("web".into())
        );
        assert_eq!(pod_from_args("IgnoreUnknown=true;FOO=1"), Ok(None));
    }

    #[test]
    fn bad_pod_arguments_are_refused_with_code_4_and_named() {
        let long = format!("K8S_POD_NAMESPACE=a;K8S_POD_NAME={}", "n".repeat(254));
        let cases = [
            ("K8S_POD_NAME", "\"K8S_POD_NAME\" is not KEY=VALUE"),
            (
                "FOO=bar;K8S_POD_NAME=x",
                "\"FOO\", which the plugin does not know",
            ),
            ("IgnoreUnknown=0;FOO=bar", "\"FOO\""),
            ("IgnoreUnknown=yes", "IgnoreUnknown=\"yes\""),
            ("K8S_POD_NAMESPACE=a/b;K8S_POD_NAME=c", "contains '/'"),
            ("K8S_POD_NAMESPACE=a;K8S_POD_NAME=c\nd", "contains '\\n'"),
            (long.as_str(), "K8S_POD_NAME is longer than 253"),
        ];
        for (args, needle) in cases {
            let e = with("CNI_ARGS", Some(args))
                .err()
                .unwrap_or_else(|| panic!("CNI_ARGS={args:?} accepted"));
            assert_eq!(e.code, 4, "{args:?}");
            assert!(e.msg.contains(needle), "{args:?}: {} lacks {needle}", e.msg);
        }
    }

    #[test]
    fn a_del_with_bad_pod_arguments_still_runs() {
        let del = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "K8S_POD_NAME"),
        ])
        .unwrap();
        assert_eq!(del.invocation.unwrap().pod, None);
    }

    #[test]
    fn del_needs_no_namespace_and_version_needs_nothing() {
        let del = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", ""),
        ])
        .unwrap();
        assert!(del.invocation.unwrap().netns.is_none());
        assert!(
            env(&[("CNI_COMMAND", "VERSION")])
                .unwrap()
                .invocation
                .is_none()
        );
        let gc = env(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/a::/b")]).unwrap();
        assert_eq!(gc.path, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
    }
}
