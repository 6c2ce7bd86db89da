//! Resource quantities (`250m`, `1.5`, `128Mi`, `1e3`) with exact arithmetic.
//!
//! A [`Quantity`] is held as an integer number of nano-units, which represents every value Kubernetes accepts for
//! CPU and memory exactly (down to `1n`, up to `8Ei` and beyond).

use std::fmt;
use std::ops::{Add, Sub};
use std::str::FromStr;

const NANO: i128 = 1_000_000_000;

/// A parsed resource quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Quantity {
    nanos: i128,
    format: Format,
}

/// How a quantity was written, kept so that it is printed back the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Format {
    /// Powers of 1000 (`m`, `k`, `M`, …) or no suffix.
    #[default]
    DecimalSi,
    /// Powers of 1024 (`Ki`, `Mi`, …).
    BinarySi,
    /// An exponent (`1e3`).
    DecimalExponent,
}

/// Why a string is not a quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {input:?}")]
pub struct QuantityError {
    /// The rejected text.
    pub input: String,
}

fn suffix_factor(suffix: &str) -> Option<(i128, i128, Format)> {
    // (numerator, denominator) of the multiplier, in units.
    let (n, d, f) = match suffix {
        "" => (1, 1, Format::DecimalSi),
        "n" => (1, 1_000_000_000, Format::DecimalSi),
        "u" => (1, 1_000_000, Format::DecimalSi),
        "m" => (1, 1_000, Format::DecimalSi),
        "k" => (1_000, 1, Format::DecimalSi),
        "M" => (1_000_000, 1, Format::DecimalSi),
        "G" => (1_000_000_000, 1, Format::DecimalSi),
        "T" => (1_000_000_000_000, 1, Format::DecimalSi),
        "P" => (1_000_000_000_000_000, 1, Format::DecimalSi),
        "E" => (1_000_000_000_000_000_000, 1, Format::DecimalSi),
        "Ki" => (1 << 10, 1, Format::BinarySi),
        "Mi" => (1 << 20, 1, Format::BinarySi),
        "Gi" => (1 << 30, 1, Format::BinarySi),
        "Ti" => (1 << 40, 1, Format::BinarySi),
        "Pi" => (1 << 50, 1, Format::BinarySi),
        "Ei" => (1 << 60, 1, Format::BinarySi),
        _ => return None,
    };
    Some((n, d, f))
}

impl FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || QuantityError { input: s.to_string() };
        let t = s.trim();
        if t.is_empty() {
            return Err(err());
        }
        let (neg, body) = match t.as_bytes()[0] {
            b'-' => (true, &t[1..]),
            b'+' => (false, &t[1..]),
            _ => (false, t),
        };
        let num_end = body.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(body.len());
        let (num, suffix) = body.split_at(num_end);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(err());
        }
        let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
        // mantissa as an integer scaled by 10^frac_len
        let digits = format!("{int_part}{frac_part}");
        let digits = digits.trim_start_matches('0');
        if digits.len() > 30 {
            return Err(err());
        }
        let mantissa: i128 = if digits.is_empty() { 0 } else { digits.parse().map_err(|_| err())? };
        let frac_len = frac_part.len() as u32;
        let (mul_n, mul_d, format, exp) = if let Some((n, d, f)) = suffix_factor(suffix) {
            (n, d, f, 0i32)
        } else if let Some(e) = suffix.strip_prefix(['e', 'E']) {
            let exp: i32 = e.parse().map_err(|_| err())?;
            if !(-18..=18).contains(&exp) {
                return Err(err());
            }
            (1, 1, Format::DecimalExponent, exp)
        } else {
            return Err(err());
        };
        // nanos = mantissa / 10^frac_len * mul_n / mul_d * 10^exp * 1e9, rounded up (Kubernetes rounds up
        // fractions smaller than the smallest unit).
        let mut num_v: i128 = mantissa.checked_mul(mul_n).and_then(|v| v.checked_mul(NANO)).ok_or_else(err)?;
        let mut den_v: i128 = 10i128.pow(frac_len) * mul_d;
        if exp >= 0 {
            num_v = num_v.checked_mul(10i128.pow(exp as u32)).ok_or_else(err)?;
        } else {
            den_v *= 10i128.pow((-exp) as u32);
        }
        let mut nanos = num_v / den_v;
        if num_v % den_v != 0 {
            nanos += 1;
        }
        Ok(Quantity { nanos: if neg { -nanos } else { nanos }, format })
    }
}

impl Quantity {
    /// A quantity of `milli` thousandths of a unit (CPU millicores).
    pub fn from_milli(milli: i64) -> Self {
        Quantity { nanos: milli as i128 * 1_000_000, format: Format::DecimalSi }
    }

    /// A whole number of units (bytes, cores, counts).
    pub fn from_units(units: i64) -> Self {
        Quantity { nanos: units as i128 * NANO, format: Format::DecimalSi }
    }

    /// A whole number of bytes, printed with binary suffixes.
    pub fn from_bytes(bytes: i64) -> Self {
        Quantity { nanos: bytes as i128 * NANO, format: Format::BinarySi }
    }

    /// The value in thousandths, rounded up (e.g. CPU millicores).
    pub fn as_milli(&self) -> i64 {
        let v = self.nanos.div_euclid(1_000_000) + i128::from(self.nanos.rem_euclid(1_000_000) != 0);
        clamp_i64(v)
    }

    /// The value in whole units, rounded up (e.g. bytes).
    pub fn as_units(&self) -> i64 {
        let v = self.nanos.div_euclid(NANO) + i128::from(self.nanos.rem_euclid(NANO) != 0);
        clamp_i64(v)
    }

    /// The value in nano-units.
    pub fn as_nanos(&self) -> i128 {
        self.nanos
    }

    /// The value as a float of units (for ratios such as utilization).
    pub fn as_f64(&self) -> f64 {
        self.nanos as f64 / NANO as f64
    }

    /// Whether the quantity is zero.
    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }

    /// The format it prints in.
    pub fn format(&self) -> Format {
        self.format
    }
}

fn clamp_i64(v: i128) -> i64 {
    v.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

impl Add for Quantity {
    type Output = Quantity;
    fn add(self, rhs: Quantity) -> Quantity {
        Quantity { nanos: self.nanos.saturating_add(rhs.nanos), format: self.format }
    }
}

impl Sub for Quantity {
    type Output = Quantity;
    fn sub(self, rhs: Quantity) -> Quantity {
        Quantity { nanos: self.nanos.saturating_sub(rhs.nanos), format: self.format }
    }
}

impl std::iter::Sum for Quantity {
    fn sum<I: Iterator<Item = Quantity>>(iter: I) -> Quantity {
        iter.fold(Quantity::default(), |a, b| a + b)
    }
}

impl fmt::Display for Quantity {
    /// Canonical form: the largest suffix of the quantity's format that keeps the value an integer.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.nanos;
        if n == 0 {
            return f.write_str("0");
        }
        let sign = if n < 0 { "-" } else { "" };
        let a = n.abs();
        if self.format == Format::BinarySi && a % NANO == 0 {
            let units = a / NANO;
            for (suffix, pow) in [("Ei", 60), ("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)] {
                if units % (1i128 << pow) == 0 {
                    return write!(f, "{sign}{}{suffix}", units >> pow);
                }
            }
            return write!(f, "{sign}{units}");
        }
        for (suffix, scale) in [
            ("E", 1_000_000_000_000_000_000_000_000_000i128),
            ("P", 1_000_000_000_000_000_000_000_000),
            ("T", 1_000_000_000_000_000_000_000),
            ("G", 1_000_000_000_000_000_000),
            ("M", 1_000_000_000_000_000),
            ("k", 1_000_000_000_000),
            ("", NANO),
            ("m", 1_000_000),
            ("u", 1_000),
            ("n", 1),
        ] {
            if a % scale == 0 {
                return write!(f, "{sign}{}{suffix}", a / scale);
            }
        }
        unreachable!("every integer is divisible by 1")
    }
}

/// Parses a k8s-openapi quantity.
pub fn parse(q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity) -> Result<Quantity, QuantityError> {
    q.0.parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        s.parse().expect(s)
    }

    #[test]
    fn cpu_quantities_convert_to_millicores() {
        assert_eq!(q("250m").as_milli(), 250);
        assert_eq!(q("1").as_milli(), 1000);
        assert_eq!(q("1.5").as_milli(), 1500);
        assert_eq!(q("0.1").as_milli(), 100);
        assert_eq!(q("100u").as_milli(), 1, "fractions of a milli round up");
    }

    #[test]
    fn memory_quantities_convert_to_bytes() {
        assert_eq!(q("128Mi").as_units(), 128 * 1024 * 1024);
        assert_eq!(q("1Gi").as_units(), 1 << 30);
        assert_eq!(q("1G").as_units(), 1_000_000_000);
        assert_eq!(q("1e3").as_units(), 1000);
        assert_eq!(q("1.5Ki").as_units(), 1536);
        assert_eq!(q("8Ei").as_units(), i64::MAX, "8Ei saturates at i64::MAX bytes");
    }

    #[test]
    fn arithmetic_is_exact() {
        assert_eq!((q("100m") + q("200m")).as_milli(), 300);
        assert_eq!((q("1Gi") - q("512Mi")).as_units(), 512 * 1024 * 1024);
        assert!(q("1") > q("999m"));
        assert_eq!(q("1000m"), Quantity { nanos: NANO, format: Format::DecimalSi });
    }

    #[test]
    fn quantities_print_canonically() {
        assert_eq!(q("250m").to_string(), "250m");
        assert_eq!(q("1024Mi").to_string(), "1Gi");
        assert_eq!(q("1500m").to_string(), "1500m");
        assert_eq!(q("2000m").to_string(), "2");
        assert_eq!(q("0").to_string(), "0");
        assert_eq!(q("-5").to_string(), "-5");
    }

    #[test]
    fn garbage_is_rejected() {
        for s in ["", "abc", "1.2.3", "12Qi", "m", "1e99", "--1"] {
            assert!(s.parse::<Quantity>().is_err(), "{s}");
        }
    }

    proptest::proptest! {
        #[test]
        fn printing_then_parsing_gives_the_same_value(milli in -10_000_000i64..10_000_000) {
            let a = Quantity::from_milli(milli);
            let b: Quantity = a.to_string().parse().expect("printed quantities parse");
            proptest::prop_assert_eq!(a.as_nanos(), b.as_nanos());
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,12}") {
            let _ = s.parse::<Quantity>();
        }
    }
}
