//! Quantities as Kubernetes writes them, and byte sizes built on them.
//!
//! [`Quantity`] is the one parser of the project for numbers with units: pod resources
//! (`gpuslice.io/gpu-memory: 16k`, which the API server writes for `16000`), annotations, and
//! `--gpu-memory` on the command line. Its grammar is `resource.Quantity`'s
//! (k8s.io/apimachinery `pkg/api/resource/quantity.go`):
//!
//! ```text
//! quantity        ::= signedNumber suffix
//! signedNumber    ::= number | sign number        sign ::= "+" | "-"
//! number          ::= digits | digits "." digits | digits "." | "." digits
//! suffix          ::= binarySI | decimalExponent | decimalSI
//! binarySI        ::= Ki | Mi | Gi | Ti | Pi | Ei
//! decimalSI       ::= n | u | m | "" | k | M | G | T | P | E
//! decimalExponent ::= ("e" | "E") [sign] digits
//! ```
//!
//! (Upstream's grammar writes the exponent as a signed number; its parser, like this one,
//! takes whole exponents only. `E` alone is the exa suffix.) Values are exact: a quantity is a
//! decimal fraction, never a float. Where a whole number is needed (counts, MiB, bytes), a
//! fraction is refused rather than rounded, and the caller names the field: a byte size of
//! `0.5` or `100m` is refused, while `1.5Gi` (a whole number of bytes) is accepted.
//!
//! [`ByteSize`] accepts every quantity that is a whole, positive number of bytes, and also the
//! binary forms with a `B` (`4GiB`, `512MiB`, `1073741824B`). `4GB`, `4KB` are refused as
//! ambiguous: they are not Kubernetes syntax, and whether a user means 10^9 or 2^30 decides
//! whether a tenant's cap is 7 % off. `4G` is Kubernetes syntax and means 4·10^9, as it does
//! in a pod's `memory: 4G`.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("empty quantity; {ACCEPTED}")]
    Empty,
    #[error("'{0}' is not a quantity; {ACCEPTED}")]
    Malformed(String),
    #[error(
        "'{0}' is ambiguous for memory and not a Kubernetes unit; write {1} (binary), a Kubernetes quantity (4Gi, 4G = 4·10^9) or a plain number of bytes"
    )]
    DecimalUnit(String, String),
    #[error("'{0}' is zero; a size must be at least one byte")]
    Zero(String),
    #[error("'{0}' is out of range (too large, or more than 38 significant digits)")]
    Overflow(String),
    #[error("'{0}' is negative; a whole number of at least 0 is needed")]
    Negative(String),
    #[error("'{0}' is not a whole number ({1}); fractions are refused, not rounded")]
    Fraction(String, String),
}

/// What [`Quantity::from_str`] accepts, for error messages.
pub const ACCEPTED: &str = "accepted: a Kubernetes quantity: a number (16000, 0.5, 1.5, 1e3) with an optional suffix Ki, Mi, Gi, Ti, Pi, Ei (powers of 1024), n, u, m, k, M, G, T, P, E (powers of 1000) or e<exponent>; byte sizes also take KiB, MiB, GiB, TiB";

/// Largest power of ten kept: enough for `1E` (10^18) times any count, and for 10^-9 (`n`).
const MAX_EXP10: i64 = 38;

/// An exact Kubernetes quantity: `(-1)^negative · mantissa / 10^scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quantity {
    negative: bool,
    mantissa: u128,
    /// Decimal places; kept minimal (the mantissa has no trailing zero while scale > 0).
    scale: u32,
}

impl Quantity {
    pub fn is_zero(&self) -> bool {
        self.mantissa == 0
    }

    pub fn is_negative(&self) -> bool {
        self.negative && self.mantissa != 0
    }

    /// The value as a whole number, refusing negative and fractional values and values past
    /// `u64`. `text` is what the user wrote, for the message.
    pub fn whole(&self, text: &str) -> Result<u64, QuantityError> {
        if self.is_negative() {
            return Err(QuantityError::Negative(text.trim().to_string()));
        }
        if self.scale > 0 {
            return Err(QuantityError::Fraction(
                text.trim().to_string(),
                format!("it is {self}"),
            ));
        }
        u64::try_from(self.mantissa).map_err(|_| QuantityError::Overflow(text.trim().to_string()))
    }

    /// Parses and converts to a whole number in one step: counts, MiB, percents, bytes.
    pub fn parse_whole(text: &str) -> Result<u64, QuantityError> {
        text.parse::<Quantity>()?.whole(text)
    }

    fn normalize(mut self) -> Self {
        while self.scale > 0 && self.mantissa.is_multiple_of(10) {
            self.mantissa /= 10;
            self.scale -= 1;
        }
        if self.mantissa == 0 {
            self.negative = false;
            self.scale = 0;
        }
        self
    }
}

impl FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(input: &str) -> Result<Self, QuantityError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(QuantityError::Empty);
        }
        let malformed = || QuantityError::Malformed(input.trim().to_string());
        let overflow = || QuantityError::Overflow(input.trim().to_string());
        let b = s.as_bytes();
        let mut i = 0;
        let negative = match b[0] {
            b'-' => {
                i = 1;
                true
            }
            b'+' => {
                i = 1;
                false
            }
            _ => false,
        };
        let int_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let int = &s[int_start..i];
        let mut frac = "";
        if i < b.len() && b[i] == b'.' {
            i += 1;
            let f = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            frac = &s[f..i];
        }
        if int.is_empty() && frac.is_empty() {
            return Err(malformed());
        }
        let suffix = &s[i..];
        // (power of 10, power of 2) the suffix multiplies by.
        let (exp10, exp2): (i32, u32) = match suffix {
            "" => (0, 0),
            "Ki" => (0, 10),
            "Mi" => (0, 20),
            "Gi" => (0, 30),
            "Ti" => (0, 40),
            "Pi" => (0, 50),
            "Ei" => (0, 60),
            "n" => (-9, 0),
            "u" => (-6, 0),
            "m" => (-3, 0),
            "k" => (3, 0),
            "M" => (6, 0),
            "G" => (9, 0),
            "T" => (12, 0),
            "P" => (15, 0),
            "E" => (18, 0),
            _ => {
                let e = suffix
                    .strip_prefix('e')
                    .or_else(|| suffix.strip_prefix('E'))
                    .ok_or_else(malformed)?;
                let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
                if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
                    return Err(malformed());
                }
                // Beyond ±38 nothing but zero fits; such an exponent is refused either way.
                let n: i32 = if digits.len() > 4 {
                    i32::MAX
                } else {
                    digits.parse().map_err(|_| malformed())?
                };
                (if e.starts_with('-') { -n } else { n }, 0)
            }
        };
        // Leading zeros carry nothing; trailing zeros of the fraction neither.
        let int = int.trim_start_matches('0');
        let frac = frac.trim_end_matches('0');
        let digits = format!("{int}{frac}");
        let digits = digits.trim_start_matches('0');
        if digits.is_empty() {
            return Ok(Quantity {
                negative: false,
                mantissa: 0,
                scale: 0,
            });
        }
        if digits.len() > 38 {
            return Err(overflow());
        }
        let mut mantissa: u128 = digits.parse().map_err(|_| overflow())?;
        let mut exp = exp10 as i64 - frac.len() as i64;
        if !(-MAX_EXP10..=MAX_EXP10).contains(&exp) {
            if exp > 0 {
                return Err(overflow());
            }
            // A non-zero value below 10^-38: smaller than anything a field can hold.
            return Err(QuantityError::Fraction(
                input.trim().to_string(),
                "it is far below 1".into(),
            ));
        }
        if exp > 0 {
            mantissa = mantissa
                .checked_mul(10u128.pow(exp as u32))
                .ok_or_else(overflow)?;
            exp = 0;
        }
        mantissa = mantissa
            .checked_shl(exp2)
            .filter(|v| v >> exp2 == mantissa)
            .ok_or_else(overflow)?;
        Ok(Quantity {
            negative,
            mantissa,
            scale: (-exp) as u32,
        }
        .normalize())
    }
}

impl fmt::Display for Quantity {
    /// Plain decimal notation, exact: `16000`, `0.5`, `-1.25`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_negative() {
            f.write_str("-")?;
        }
        if self.scale == 0 {
            return write!(f, "{}", self.mantissa);
        }
        let d = self.mantissa.to_string();
        let s = self.scale as usize;
        if d.len() > s {
            write!(f, "{}.{}", &d[..d.len() - s], &d[d.len() - s..])
        } else {
            write!(f, "0.{}{d}", "0".repeat(s - d.len()))
        }
    }
}

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

    /// A [`Quantity`] that is a whole, positive number of bytes, or a binary size with a `B`
    /// (`4GiB`, `1073741824B`); one space may stand before the unit (`2 GiB`).
    fn from_str(input: &str) -> Result<Self, QuantityError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(QuantityError::Empty);
        }
        let unit_at = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
        let (num, unit) = (s[..unit_at].trim_end(), &s[unit_at..]);
        if num.contains(char::is_whitespace) {
            return Err(QuantityError::Malformed(s.to_string()));
        }
        let unit = match unit {
            "KiB" | "MiB" | "GiB" | "TiB" | "PiB" | "EiB" => &unit[..2],
            "B" => "",
            "K" | "KB" | "kB" | "MB" | "GB" | "TB" | "PB" | "EB" => {
                let binary = format!("{num}{}iB", &unit[..1].to_ascii_uppercase());
                return Err(QuantityError::DecimalUnit(s.to_string(), binary));
            }
            u => u,
        };
        let q: Quantity = format!("{num}{unit}").parse().map_err(|e| match e {
            QuantityError::Malformed(_) => QuantityError::Malformed(s.to_string()),
            QuantityError::Overflow(_) => QuantityError::Overflow(s.to_string()),
            other => other,
        })?;
        if q.is_zero() {
            return Err(QuantityError::Zero(s.to_string()));
        }
        Ok(ByteSize(q.whole(s)?))
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
                    return if hundredths.is_multiple_of(100) {
                        write!(f, "{}{name}", hundredths / 100)
                    } else if hundredths.is_multiple_of(10) {
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

    fn q(s: &str) -> String {
        s.parse::<Quantity>()
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .to_string()
    }

    /// Values from apimachinery's own documentation and tests of `resource.Quantity`.
    #[test]
    fn kubernetes_quantities_have_their_upstream_values() {
        for (s, v) in [
            ("0", "0"),
            ("16000", "16000"),
            ("16k", "16000"),
            ("1Gi", "1073741824"),
            ("500M", "500000000"),
            ("1e3", "1000"),
            ("1E3", "1000"),
            ("1e+3", "1000"),
            ("1e-3", "0.001"),
            ("0.5", "0.5"),
            (".5", "0.5"),
            ("5.", "5"),
            ("1.5", "1.5"),
            ("1500m", "1.5"),
            ("1.5Gi", "1610612736"),
            ("100m", "0.1"),
            ("1n", "0.000000001"),
            ("1u", "0.000001"),
            ("1E", "1000000000000000000"),
            ("8Ei", "9223372036854775808"),
            ("+7", "7"),
            ("-7", "-7"),
            ("-0", "0"),
            ("007", "7"),
            ("1.0", "1"),
            ("12e6", "12000000"),
            ("1.G", "1000000000"),
        ] {
            assert_eq!(q(s), v, "{s}");
        }
    }

    #[test]
    fn malformed_quantities_are_refused_with_the_grammar() {
        for s in [
            "", " ", "k", "Gi", "1K", "1 k", "1KiB", "1kb", "1.5.5", "1..5", "..5", ".", "+", "-",
            "1e", "1e+", "1ee3", "1e1.5", "0x10", "1Gi ", "Gi1", "1i", "1.2.3k", "--1", "1+",
        ] {
            let e = s.parse::<Quantity>();
            // Surrounding whitespace is trimmed: "1Gi " is fine.
            if s == "1Gi " {
                assert!(e.is_ok());
                continue;
            }
            let e = e.expect_err(s);
            let m = e.to_string();
            assert!(m.contains("Ki, Mi") || m.contains("empty"), "{s}: {m}");
        }
        assert!(matches!(
            "1e99".parse::<Quantity>(),
            Err(QuantityError::Overflow(_))
        ));
    }

    #[test]
    fn whole_numbers_refuse_fractions_and_negatives() {
        assert_eq!(Quantity::parse_whole("16k").unwrap(), 16000);
        assert_eq!(Quantity::parse_whole("1e3").unwrap(), 1000);
        assert_eq!(Quantity::parse_whole("2000m").unwrap(), 2);
        assert!(matches!(
            Quantity::parse_whole("0.5"),
            Err(QuantityError::Fraction(..))
        ));
        assert!(matches!(
            Quantity::parse_whole("100m"),
            Err(QuantityError::Fraction(..))
        ));
        assert!(matches!(
            Quantity::parse_whole("-1"),
            Err(QuantityError::Negative(_))
        ));
        assert!(matches!(
            Quantity::parse_whole("20E"),
            Err(QuantityError::Overflow(_))
        ));
        assert_eq!(
            Quantity::parse_whole("18446744073709551615").unwrap(),
            u64::MAX
        );
    }

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
            // Kubernetes syntax, with Kubernetes' meaning.
            ("4G", 4_000_000_000),
            ("500M", 500_000_000),
            ("16k", 16_000),
            ("1e9", 1_000_000_000),
            ("1.GiB", 1 << 30),
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
            "4KB",
            "4K",
            "1..5GiB",
            "0",
            "0GiB",
            "99999999999TiB",
            "4GiBs",
            "0x10",
            "0.5",
            "100m",
            "1.5Ki1",
            "1 2GiB",
        ] {
            let e = s.parse::<ByteSize>().unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains("iB")
                    || msg.contains("zero")
                    || msg.contains("large")
                    || msg.contains("empty")
                    || msg.contains("negative")
                    || msg.contains("whole number"),
                "{s}: {msg}"
            );
        }
        assert!(
            matches!("4GB".parse::<ByteSize>(), Err(QuantityError::DecimalUnit(_, b)) if b == "4GiB")
        );
        // A fraction of a byte is refused, not rounded.
        assert!(matches!(
            "0.5".parse::<ByteSize>(),
            Err(QuantityError::Fraction(..))
        ));
    }

    #[test]
    fn display_round_trips_common_sizes() {
        for b in [1u64 << 30, 3 << 29, 512 << 20, 80 << 30, 1000, 7 << 10] {
            let s = ByteSize(b).to_string();
            assert_eq!(s.parse::<ByteSize>().unwrap().bytes(), b, "{s}");
        }
    }

    /// A suffix's factor as an exact integer (binary) or power of ten.
    fn suffixes() -> impl Strategy<Value = (&'static str, u128, i32)> {
        prop::sample::select(vec![
            ("", 1u128, 0i32),
            ("Ki", 1 << 10, 0),
            ("Mi", 1 << 20, 0),
            ("Gi", 1 << 30, 0),
            ("Ti", 1 << 40, 0),
            ("k", 1, 3),
            ("M", 1, 6),
            ("G", 1, 9),
            ("T", 1, 12),
            ("m", 1, -3),
            ("e2", 1, 2),
            ("e-2", 1, -2),
        ])
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
            let _ = s.parse::<Quantity>();
        }

        #[test]
        fn parsing_never_panics_on_quantity_shapes(s in "[+-]?[0-9]{0,25}(\\.[0-9]{0,25})?([eE][+-]?[0-9]{0,6}|[KMGTPE]i|[numkMGTPE])?") {
            let _ = s.parse::<Quantity>();
        }

        /// Integer · suffix, however the integer is written (leading zeros, a fraction of
        /// zeros, an exponent moved into the digits), has the value integer × factor.
        #[test]
        fn value_is_mantissa_times_suffix(n in 0u64..1_000_000_000, (suf, mul, e10) in suffixes(), zeros in 0usize..4) {
            let text = format!("{}{n}{}{suf}", "0".repeat(zeros), if zeros % 2 == 1 { ".000" } else { "" });
            let got: Quantity = text.parse().unwrap();
            let want = n as u128 * mul;
            let expect = if e10 >= 0 {
                (want * 10u128.pow(e10 as u32)).to_string()
            } else {
                Quantity { negative: false, mantissa: want, scale: (-e10) as u32 }.normalize().to_string()
            };
            prop_assert_eq!(got.to_string(), expect, "{}", text);
        }

        /// A value written with a decimal point and the same value scaled into an integer with
        /// a smaller suffix are equal: `1.5k` = `1500`, `2.25Gi`… (exactness, no float).
        #[test]
        fn decimal_point_and_scaled_forms_agree(int in 0u64..100_000, frac in 0u32..1000) {
            let a: Quantity = format!("{int}.{frac:03}k").parse().unwrap();
            let b: Quantity = format!("{}", int as u128 * 1000 + frac as u128).parse().unwrap();
            prop_assert_eq!(a, b);
            let c: Quantity = format!("{int}{frac:03}e-3").parse().unwrap();
            let d: Quantity = format!("{int}.{frac:03}").parse().unwrap();
            prop_assert_eq!(c, d);
        }

        /// Display is plain decimal and parses back to the same quantity.
        #[test]
        fn display_parses_back(neg in any::<bool>(), m in 0u64.., scale in 0u32..12) {
            let v = Quantity { negative: neg, mantissa: m as u128, scale }.normalize();
            prop_assert_eq!(v.to_string().parse::<Quantity>().unwrap(), v);
        }
    }
}
