//! Human-written durations (`"10s"`, `"1m30s"`, `"250ms"`) and sizes (`"1G"`, `"512M"`) as they appear
//! in `ecosystem.toml`, with serde support so a bad value is reported by the TOML deserializer at the
//! value's own line and column; and the short forms tables show (`3h`, `12.5M`), written once here
//! for every table (`list`, `monit`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A duration written as one or more `<number><unit>` groups, unit one of `ms`, `s`, `m`, `h`, `d`.
///
/// A bare number is refused on purpose: PM2 mixes milliseconds (`kill_timeout: 5000`) and seconds,
/// and an operator porting a config should be told, not silently get a 5000-second timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct HumanDuration(pub Duration);

/// A size in bytes written as `<number>[unit]`, unit one of `B`, `K`, `M`, `G`, `T` (binary multiples,
/// as PM2 reads `max_memory_restart`), optionally followed by `B` or `iB`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let expected = || {
            format!(
                "invalid duration {text:?}: expected e.g. \"500ms\", \"5s\", \"1m30s\", \"2h\" (units ms, s, m, h, d)"
            )
        };
        let mut rest = text.trim();
        if rest.is_empty() {
            return Err(expected());
        }
        let mut total = Duration::ZERO;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            if digits == 0 {
                return Err(expected());
            }
            let number: u64 = rest[..digits].parse().map_err(|_| expected())?;
            rest = &rest[digits..];
            let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
            let unit = rest[..unit_len].trim();
            rest = &rest[unit_len..];
            let millis_per_unit: u64 = match unit {
                "ms" => 1,
                "s" => 1_000,
                "m" | "min" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                _ => return Err(expected()),
            };
            let millis = number.checked_mul(millis_per_unit).ok_or_else(expected)?;
            total = total.checked_add(Duration::from_millis(millis)).ok_or_else(expected)?;
        }
        Ok(Self(total))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            return write!(f, "0s");
        }
        for (unit, size) in [("d", 86_400_000u128), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
            if ms.is_multiple_of(size) {
                return write!(f, "{}{unit}", ms / size);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let expected =
            || format!("invalid size {text:?}: expected e.g. \"512M\", \"1G\", \"10MB\" (units B, K, M, G, T)");
        let trimmed = text.trim();
        let digits = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
        if digits == 0 {
            return Err(expected());
        }
        let number: u64 = trimmed[..digits].parse().map_err(|_| expected())?;
        let unit = trimmed[digits..].trim().to_ascii_uppercase();
        let unit = unit.strip_suffix("IB").or_else(|| unit.strip_suffix('B')).unwrap_or(&unit);
        let shift = match unit {
            "" => 0,
            "K" => 10,
            "M" => 20,
            "G" => 30,
            "T" => 40,
            _ => return Err(expected()),
        };
        number.checked_mul(1u64 << shift).map(Self).ok_or_else(expected)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
            if self.0 >= 1 << shift && self.0.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl ByteSize {
    /// For messages: one decimal in the largest unit that fits (`1.2G`), where `Display` is exact.
    pub fn to_string_rounded(self) -> String {
        for (unit, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
            if self.0 >= 1 << shift {
                return format!("{:.1}{unit}", self.0 as f64 / (1u64 << shift) as f64);
            }
        }
        format!("{}B", self.0)
    }
}

/// An uptime as tables show it: the largest whole unit (`45s`, `12m`, `3h`, `2d`).
pub fn short_duration(ms: u64) -> String {
    match ms / 1000 {
        s @ 0..60 => format!("{s}s"),
        s @ 60..3600 => format!("{}m", s / 60),
        s @ 3600..86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Memory in MiB with one decimal (`12.5M`), whatever its size: a column of one unit compares at a
/// glance (`monit`).
pub fn mebibytes(bytes: u64) -> String {
    format!("{:.1}M", bytes as f64 / (1u64 << 20) as f64)
}

/// Memory in MiB, or in GiB from 1 GiB on (`12.5M`, `1.2G`), as `list` shows it.
pub fn memory(bytes: u64) -> String {
    if bytes >= 1 << 30 { format!("{:.1}G", bytes as f64 / (1u64 << 30) as f64) } else { mebibytes(bytes) }
}

/// Serde glue shared by both types: a string parsed with `FromStr`, written back with `Display`.
macro_rules! human_serde {
    ($ty:ty, $what:literal) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct HumanVisitor;
                impl Visitor<'_> for HumanVisitor {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$ty, E> {
                        v.parse().map_err(E::custom)
                    }
                }
                deserializer.deserialize_str(HumanVisitor)
            }
        }
    };
}

human_serde!(HumanDuration, "a duration string such as \"5s\" or \"1m30s\"");
human_serde!(ByteSize, "a size string such as \"512M\" or \"1G\"");

impl schemars::JsonSchema for HumanDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "e.g. \"500ms\", \"5s\", \"1m30s\", \"2h\", \"1d\"",
            "pattern": "^\\s*([0-9]+\\s*(ms|s|m|min|h|d)\\s*)+$"
        })
    }
}

impl schemars::JsonSchema for ByteSize {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Size".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "e.g. \"512M\", \"1G\", \"10MB\" (binary multiples)",
            "pattern": "^\\s*[0-9]+\\s*([KkMmGgTt]?([Ii]?[Bb])?)?\\s*$"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("10s", 10_000),
            ("1m", 60_000),
            ("250ms", 250),
            ("1m30s", 90_000),
            ("2h", 7_200_000),
            ("1d", 86_400_000),
            ("0s", 0),
        ];
        for (text, ms) in ok {
            assert_eq!(text.parse::<HumanDuration>().map(|d| d.0), Ok(Duration::from_millis(ms)), "{text}");
        }
        for bad in ["", "10", "s", "10x", "1.5s", "-1s", "99999999999999999999s"] {
            assert!(bad.parse::<HumanDuration>().is_err(), "{bad:?} should be refused");
        }
        assert_eq!(HumanDuration(Duration::from_millis(90_000)).to_string(), "90s");
        assert_eq!(HumanDuration(Duration::from_millis(1_500)).to_string(), "1500ms");
    }

    #[test]
    fn sizes() {
        let ok = [("1G", 1u64 << 30), ("512M", 512 << 20), ("10MB", 10 << 20), ("4KiB", 4096), ("100", 100)];
        for (text, bytes) in ok {
            assert_eq!(text.parse::<ByteSize>().map(|s| s.0), Ok(bytes), "{text}");
        }
        for bad in ["", "G", "1X", "1.5G", "-1M"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad:?} should be refused");
        }
        assert_eq!(ByteSize(1 << 30).to_string(), "1G");
    }

    #[test]
    fn table_forms() {
        for (ms, text) in [(0, "0s"), (59_999, "59s"), (60_000, "1m"), (3_600_000, "1h"), (86_400_000, "1d")] {
            assert_eq!(short_duration(ms), text, "{ms} ms");
        }
        assert_eq!(mebibytes(5 << 20), "5.0M");
        assert_eq!(mebibytes(3 << 30), "3072.0M");
        assert_eq!(memory((1 << 30) - (1 << 20)), "1023.0M");
        assert_eq!(memory(3 << 29), "1.5G");
    }
}
