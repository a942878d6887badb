//! Byte sizes written the way Kubernetes writes memory: `67108864`, `64Mi`, `1Gi`, `500k`.
//! One syntax for the server's flags, the CRD's fields and the Helm values, so a size
//! copied from one to the other means the same thing (the CRD's pattern is [`PATTERN`]).

/// The accepted syntax, as a regular expression (used by the CRD's OpenAPI schema).
pub const PATTERN: &str = "^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$";

/// Parses a whole number of bytes with an optional binary (`Ki`, `Mi`, `Gi`, `Ti`) or
/// decimal (`k`, `M`, `G`, `T`) suffix. Fractions, signs, spaces and other suffixes are
/// refused, with a message that says what is accepted.
pub fn parse(raw: &str) -> Result<u64, String> {
    let digits_end = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (digits, suffix) = raw.split_at(digits_end);
    let unit: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return Err(invalid(raw)),
    };
    if digits.is_empty() {
        return Err(invalid(raw));
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| format!("'{raw}' is too large"))
}

/// [`parse`], for a size held in a `usize` (a body or value limit).
pub fn parse_usize(raw: &str) -> Result<usize, String> {
    parse(raw).and_then(|n| usize::try_from(n).map_err(|_| format!("'{raw}' is too large")))
}

fn invalid(raw: &str) -> String {
    format!(
        "'{raw}' is not a size: give whole bytes, optionally with a suffix Ki, Mi, Gi, Ti \
         (powers of 1024) or k, M, G, T (powers of 1000), such as 64Mi"
    )
}

#[cfg(test)]
mod tests {
    use super::{parse, parse_usize};

    #[test]
    fn a_usize_takes_the_same_syntax() {
        assert_eq!(parse_usize("64Mi"), Ok(64 << 20));
        assert_eq!(parse_usize("1048576"), Ok(1 << 20));
        assert!(parse_usize("1.5Mi").unwrap_err().contains("64Mi"));
    }

    #[test]
    fn plain_binary_and_decimal_sizes() {
        assert_eq!(parse("0"), Ok(0));
        assert_eq!(parse("67108864"), Ok(64 << 20));
        assert_eq!(parse("64Mi"), Ok(64 << 20));
        assert_eq!(parse("1Gi"), Ok(1 << 30));
        assert_eq!(parse("2Ti"), Ok(2 << 40));
        assert_eq!(parse("500k"), Ok(500_000));
        assert_eq!(parse("3M"), Ok(3_000_000));
        assert_eq!(parse("1G"), Ok(1_000_000_000));
        for good in GOOD {
            assert!(parse(good).is_ok(), "{good}");
        }
    }

    const GOOD: [&str; 8] = ["0", "67108864", "64Mi", "1Gi", "2Ti", "500k", "3M", "1G"];
    const BAD: [&str; 12] = [
        "", "Mi", "1.5Mi", "-1", "+1", " 1", "1 Mi", "1MiB", "1mi", "1m", "1K", "0x10",
    ];

    #[test]
    fn everything_else_is_refused_with_the_syntax() {
        for bad in BAD {
            let err = parse(bad).unwrap_err();
            assert!(err.contains("64Mi"), "{bad}: {err}");
        }
        assert!(parse("99999999999Ti").unwrap_err().contains("too large"));
        assert!(
            parse("99999999999999999999")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn the_crd_pattern_accepts_exactly_what_parse_accepts() {
        let pattern = regex::Regex::new(super::PATTERN).unwrap();
        for good in GOOD {
            assert!(pattern.is_match(good) && parse(good).is_ok(), "{good}");
        }
        for bad in BAD {
            assert!(!pattern.is_match(bad), "{bad}");
        }
    }
}
