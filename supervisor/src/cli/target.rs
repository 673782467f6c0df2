//! `APP`, `APP:INDEX` or `all`: what `stop`, `restart`, `signal`, `env`, `logs` and `describe` act
//! on, parsed once here. Whether the app has that instance is the daemon's to say: only it knows
//! the instance count at that moment.

use std::fmt;
use std::str::FromStr;

/// An app (or every app, `all`), and optionally one of its instances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceTarget {
    /// `None`: every app.
    pub app: Option<String>,
    /// `None`: every instance.
    pub index: Option<usize>,
}

impl InstanceTarget {
    /// The app's name, for verbs that act on one app only (`signal`, `env`, `describe`).
    pub fn one_app(&self) -> Result<&str, String> {
        self.app.as_deref().ok_or_else(|| "name one app (APP or APP:INDEX), not `all`".to_owned())
    }
}

impl FromStr for InstanceTarget {
    type Err = String;

    fn from_str(text: &str) -> Result<InstanceTarget, String> {
        let (name, index) = match text.rsplit_once(':') {
            None => (text, None),
            Some((name, index)) => {
                let index = index.parse::<usize>().map_err(|_| {
                    format!("{text:?}: expected APP:INDEX with INDEX an instance number from 0 ({name}:0)")
                })?;
                (name, Some(index))
            }
        };
        match name {
            "" => Err(format!("{text:?}: an app name is missing before the instance")),
            "all" if index.is_some() => Err(format!("{text:?}: `all` takes no instance; name the app")),
            "all" => Ok(InstanceTarget { app: None, index: None }),
            _ => Ok(InstanceTarget { app: Some(name.to_owned()), index }),
        }
    }
}

impl fmt::Display for InstanceTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.app.as_deref().unwrap_or("all"))?;
        match self.index {
            Some(index) => write!(f, ":{index}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let ok = |app: Option<&str>, index| Ok(InstanceTarget { app: app.map(str::to_owned), index });
        for (text, want) in [
            ("web", ok(Some("web"), None)),
            ("web:0", ok(Some("web"), Some(0))),
            ("chat-worker.v2:12", ok(Some("chat-worker.v2"), Some(12))),
            ("all", ok(None, None)),
        ] {
            assert_eq!(text.parse::<InstanceTarget>(), want, "{text}");
            if let Ok(target) = want {
                assert_eq!(target.to_string(), text);
            }
        }
        for (text, says) in [
            ("web:x", "INDEX an instance number"),
            ("web:", "INDEX an instance number"),
            ("web:-1", "INDEX an instance number"),
            (":1", "app name is missing"),
            ("all:1", "`all` takes no instance"),
        ] {
            let error = text.parse::<InstanceTarget>().expect_err(text);
            assert!(error.contains(says), "{text}: {error}");
        }
    }
}
