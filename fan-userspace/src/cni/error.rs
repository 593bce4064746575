//! CNI errors: the specification's error object, printed on stdout with a
//! non-zero exit. Codes below 100 are the specification's well-known ones;
//! 100 and up are this plugin's own.

use serde::Serialize;

/// The incompatible CNI version of the configuration (or of a command).
pub const INCOMPATIBLE_VERSION: u32 = 1;
/// A variable of the environment (CNI_COMMAND, CNI_CONTAINERID, ...) is missing or bad.
pub const BAD_ENVIRONMENT: u32 = 4;
/// Reading or writing the plugin's state failed.
pub const IO_FAILURE: u32 = 5;
/// The configuration on stdin is not JSON of the expected shape.
pub const DECODE: u32 = 6;
/// The configuration decodes but a field's value is refused.
pub const INVALID_CONFIG: u32 = 7;
/// Transient: the fan is not attached (yet), the agent is not up (yet).
pub const TRY_AGAIN_LATER: u32 = 11;
/// STATUS: the plugin cannot serve ADD now.
pub const NOT_AVAILABLE: u32 = 50;
/// The agent refused the binding: the address is bound to another live port.
pub const ADDRESS_BOUND_ELSEWHERE: u32 = 100;
/// Host plumbing (rtnetlink) failed.
pub const PLUMBING: u32 = 101;
/// The delegated IPAM plugin failed without a CNI error of its own.
pub const DELEGATE: u32 = 102;
/// CHECK found the attachment not as ADD left it.
pub const CHECK_FAILED: u32 = 103;
/// The agent did not acknowledge a binding.
pub const AGENT: u32 = 104;
/// The plugin's own address range is exhausted.
pub const RANGE_FULL: u32 = 105;

/// The error object of the specification.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CniError {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            cni_version: super::version::LATEST.to_string(),
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Adds the chain of causes of `e` as the details.
    pub fn details(mut self, e: &anyhow::Error) -> Self {
        self.details = format!("{e:#}");
        self
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CNI error {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

/// Shorthand for results of the plugin's steps.
pub type CniResult<T> = Result<T, CniError>;

/// Attaches a CNI code to an anyhow error.
pub trait Code<T> {
    fn code(self, code: u32, msg: &str) -> CniResult<T>;
}

impl<T> Code<T> for anyhow::Result<T> {
    fn code(self, code: u32, msg: &str) -> CniResult<T> {
        self.map_err(|e| match e.downcast::<CniError>() {
            // Already coded further down (a delegated plugin's own error).
            Ok(coded) => coded,
            Err(e) => CniError::new(code, msg).details(&e),
        })
    }
}
