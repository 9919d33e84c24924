//! Byte quantities as users write them: `4GiB`, `512MiB`, `4Gi`, `1.5GiB`, `1073741824`.
//!
//! Only binary units are accepted. `4GB`/`4G` are refused rather than guessed: whether a user
//! means 10^9 or 2^30 decides whether a tenant's cap is 7 % off.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("empty size; {ACCEPTED}")]
    Empty,
    #[error("'{0}' is not a size; {ACCEPTED}")]
    Malformed(String),
    #[error(
        "'{0}' uses a decimal unit, which is ambiguous for memory; write {1} (binary) or a plain number of bytes"
    )]
    DecimalUnit(String, String),
    #[error("'{0}' is zero; a size must be at least one byte")]
    Zero(String),
    #[error("'{0}' is too large (more than 2^64 bytes)")]
    Overflow(String),
}

/// What [`ByteSize::from_str`] accepts, for error messages.
pub const ACCEPTED: &str = "accepted: a number of bytes (1073741824) or a number with a binary unit KiB, MiB, GiB, TiB (also Ki, Mi, Gi, Ti), e.g. 4GiB, 512MiB, 4Gi, 1.5GiB";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const KIB: u64 = 1 << 10;
    pub const MIB: u64 = 1 << 20;
    pub const GIB: u64 = 1 << 30;
    pub const TIB: u64 = 1 << 40;

    pub const fn bytes(self) -> u64 {
        self.0
    }
    pub const fn mib(n: u64) -> Self {
        Self(n * Self::MIB)
    }
    pub const fn gib(n: u64) -> Self {
        Self(n * Self::GIB)
    }
}

impl FromStr for ByteSize {
    type Err = QuantityError;

    fn from_str(input: &str) -> Result<Self, QuantityError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(QuantityError::Empty);
        }
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = (&s[..split], s[split..].trim_start());
        let malformed = || QuantityError::Malformed(input.to_string());
        let mult: u64 = match unit {
            "" | "B" => 1,
            "Ki" | "KiB" => ByteSize::KIB,
            "Mi" | "MiB" => ByteSize::MIB,
            "Gi" | "GiB" => ByteSize::GIB,
            "Ti" | "TiB" => ByteSize::TIB,
            "K" | "KB" | "k" | "kB" | "M" | "MB" | "G" | "GB" | "T" | "TB" => {
                let binary = format!("{num}{}iB", &unit[..1].to_ascii_uppercase());
                return Err(QuantityError::DecimalUnit(input.to_string(), binary));
            }
            _ => return Err(malformed()),
        };
        let (int, frac) = match num.split_once('.') {
            Some((i, f)) => (i, f),
            None => (num, ""),
        };
        if int.is_empty() && frac.is_empty()
            || frac.contains('.')
            || (num.contains('.') && frac.is_empty())
        {
            return Err(malformed());
        }
        if frac.len() > 18 {
            return Err(malformed());
        }
        let int_v: u128 = if int.is_empty() {
            0
        } else {
            int.parse()
                .map_err(|_| QuantityError::Overflow(input.to_string()))?
        };
        let frac_v: u128 = if frac.is_empty() {
            0
        } else {
            frac.parse().map_err(|_| malformed())?
        };
        let scale = 10u128.pow(frac.len() as u32);
        // Exact arithmetic; a fraction of a byte rounds down.
        let total = int_v
            .checked_mul(mult as u128)
            .and_then(|v| v.checked_add(frac_v * mult as u128 / scale))
            .filter(|&v| v <= u64::MAX as u128)
            .ok_or_else(|| QuantityError::Overflow(input.to_string()))?;
        if total == 0 {
            return Err(QuantityError::Zero(input.to_string()));
        }
        Ok(ByteSize(total as u64))
    }
}

impl fmt::Display for ByteSize {
    /// The largest binary unit that shows the value exactly with at most two decimals, else bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, name) in [
            (Self::TIB, "TiB"),
            (Self::GIB, "GiB"),
            (Self::MIB, "MiB"),
            (Self::KIB, "KiB"),
        ] {
            if b >= unit {
                let hundredths = b as u128 * 100 / unit as u128;
                if hundredths * unit as u128 == b as u128 * 100 {
                    return if hundredths % 100 == 0 {
                        write!(f, "{}{name}", hundredths / 100)
                    } else if hundredths % 10 == 0 {
                        write!(f, "{}.{}{name}", hundredths / 100, (hundredths % 100) / 10)
                    } else {
                        write!(f, "{}.{:02}{name}", hundredths / 100, hundredths % 100)
                    };
                }
                if b >= 10 * unit {
                    // Not exact: show one decimal, marked approximate.
                    return write!(f, "~{:.1}{name}", b as f64 / unit as f64);
                }
            }
        }
        write!(f, "{b}B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_the_documented_forms() {
        for (s, v) in [
            ("4GiB", 4 << 30),
            ("512MiB", 512 << 20),
            ("4Gi", 4 << 30),
            ("1.5GiB", 3 << 29),
            ("1073741824", 1 << 30),
            ("1073741824B", 1 << 30),
            (" 2 GiB ", 2 << 30),
            ("0.5Ki", 512),
            ("1TiB", 1 << 40),
        ] {
            assert_eq!(s.parse::<ByteSize>().unwrap().bytes(), v, "{s}");
        }
    }

    #[test]
    fn refuses_everything_else_and_says_what_is_accepted() {
        for s in [
            "",
            "GiB",
            "4 gigs",
            "-1GiB",
            "4GB",
            "4G",
            "1..5GiB",
            "1.GiB",
            "0",
            "0GiB",
            "99999999999TiB",
            "4GiBs",
            "0x10",
            "1e9",
        ] {
            let e = s.parse::<ByteSize>().unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains("GiB")
                    || msg.contains("zero")
                    || msg.contains("large")
                    || msg.contains("empty"),
                "{s}: {msg}"
            );
        }
        assert!(
            matches!("4GB".parse::<ByteSize>(), Err(QuantityError::DecimalUnit(_, b)) if b == "4GiB")
        );
    }

    #[test]
    fn display_round_trips_common_sizes() {
        for b in [1u64 << 30, 3 << 29, 512 << 20, 80 << 30, 1000, 7 << 10] {
            let s = ByteSize(b).to_string();
            assert_eq!(s.parse::<ByteSize>().unwrap().bytes(), b, "{s}");
        }
    }

    proptest! {
        #[test]
        fn any_mib_count_round_trips(n in 1u64..(1 << 24)) {
            let s = format!("{n}MiB");
            prop_assert_eq!(s.parse::<ByteSize>().unwrap().bytes(), n << 20);
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,16}") {
            let _ = s.parse::<ByteSize>();
        }
    }
}
