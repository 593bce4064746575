//! The specification versions the plugin speaks, and what each allows.
//!
//! libcni asks every plugin of a list for VERSION and refuses the list unless
//! its `cniVersion` is among the plugin's: Podman writes 0.4.0, Debian's
//! reference plugins go up to 1.0.0, so a list chaining them is 1.0.0 or
//! lower. CHECK came with 0.4.0, STATUS and GC with 1.1.0.

use super::error::{CniError, CniResult, INCOMPATIBLE_VERSION};

/// Every version the plugin answers in, oldest first.
pub const SUPPORTED: [&str; 4] = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const LATEST: &str = "1.1.0";

/// A supported version, ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V031,
    V040,
    V100,
    V110,
}

impl Version {
    pub fn parse(text: &str) -> CniResult<Self> {
        match text {
            "0.3.1" => Ok(Self::V031),
            "0.4.0" => Ok(Self::V040),
            "1.0.0" => Ok(Self::V100),
            "1.1.0" => Ok(Self::V110),
            other => Err(CniError::new(
                INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion {other:?} is not supported: the fan plugin speaks {}",
                    SUPPORTED.join(", ")
                ),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        SUPPORTED[self as usize]
    }

    /// Results before 1.0.0 name each address's IP version.
    pub fn ips_carry_version(self) -> bool {
        self < Self::V100
    }

    /// Interfaces carry their MTU from 1.1.0 on.
    pub fn interfaces_carry_mtu(self) -> bool {
        self >= Self::V110
    }

    /// Refuses `command` where this version does not have it.
    pub fn allows(self, command: &str) -> CniResult<()> {
        let since = match command {
            "CHECK" => Self::V040,
            "STATUS" | "GC" => Self::V110,
            _ => return Ok(()),
        };
        if self < since {
            return Err(CniError::new(
                INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion {} has no {command}: it came with {}",
                    self.as_str(),
                    since.as_str()
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_advertised_version_parses_and_others_are_refused_with_code_1() {
        for text in SUPPORTED {
            assert_eq!(Version::parse(text).unwrap().as_str(), text);
        }
        let e = Version::parse("0.2.0").unwrap_err();
        assert_eq!(e.code, 1);
        assert!(e.msg.contains("\"0.2.0\""), "{}", e.msg);
    }

    #[test]
    fn commands_arrive_with_their_versions() {
        assert_eq!(Version::V031.allows("CHECK").unwrap_err().code, 1);
        assert!(Version::V040.allows("CHECK").is_ok());
        assert_eq!(Version::V100.allows("STATUS").unwrap_err().code, 1);
        assert_eq!(Version::V100.allows("GC").unwrap_err().code, 1);
        assert!(Version::V110.allows("GC").is_ok());
        assert!(Version::V031.allows("ADD").is_ok());
    }
}
