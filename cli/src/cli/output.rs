//! Small formatting helpers for the human-readable output: times, sizes, values.

use serde_json::value::RawValue;

/// A Unix timestamp as `2026-11-23 08:00:24 UTC`: readable, and the same on every machine.
pub fn time(unix_secs: f64) -> String {
    if !unix_secs.is_finite() {
        return unix_secs.to_string();
    }
    let secs = unix_secs.floor() as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let (h, min, s) = (rest / 3600, rest % 3600 / 60, rest % 60);
    format!("{y:04}-{m:02}-{d:02} {h:02}:{min:02}:{s:02} UTC")
}

/// Days since 1970-01-01 to (year, month, day): Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `1536` -> `1.5 KiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A stored value on one line, cut at `max` characters: for tables.
pub fn one_line(value: &RawValue, max: usize) -> String {
    // As stored when it is one line already (re-serializing would round big integers);
    // pretty-printed JSON is compacted.
    let text = match value.get() {
        text if !text.contains('\n') => text.to_owned(),
        text => serde_json::from_str::<serde_json::Value>(text)
            .map_or_else(|_| text.replace('\n', " "), |v| v.to_string()),
    };
    if text.chars().count() <= max {
        return text;
    }
    let cut: String = text.chars().take(max.saturating_sub(3)).collect();
    format!("{cut}...")
}

/// A stored value, pretty-printed when it is an object or an array.
pub fn pretty(value: &RawValue) -> String {
    match serde_json::from_str::<serde_json::Value>(value.get()) {
        Ok(v @ (serde_json::Value::Object(_) | serde_json::Value::Array(_))) => {
            serde_json::to_string_pretty(&v).unwrap_or_else(|_| value.get().to_owned())
        }
        // Scalars exactly as stored: a big integer or `1.0` stays as the client wrote it.
        _ => value.get().to_owned(),
    }
}

/// Rows as columns separated by two spaces, each as wide as its widest cell.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_dates() {
        assert_eq!(time(0.0), "1970-01-01 00:00:00 UTC");
        assert_eq!(time(951_782_400.5), "2000-02-29 00:00:00 UTC");
        assert_eq!(time(1_795_420_824.07), "2026-11-23 08:00:24 UTC");
        assert_eq!(time(-1.0), "1969-12-31 23:59:59 UTC");
    }

    #[test]
    fn sizes_and_values() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 << 20), "5.0 MiB");
        let raw = RawValue::from_string(r#"{"a": [1, 2], "b": "xyz"}"#.into()).unwrap();
        assert_eq!(one_line(&raw, 100), r#"{"a": [1, 2], "b": "xyz"}"#);
        assert_eq!(one_line(&raw, 10), r#"{"a": [..."#);
        let multi = RawValue::from_string("[1,\n 2]".into()).unwrap();
        assert_eq!(one_line(&multi, 100), "[1,2]");
        assert!(pretty(&raw).contains("\n  \"a\": ["));
        let big = RawValue::from_string("12345678901234567890123".into()).unwrap();
        assert_eq!(pretty(&big), "12345678901234567890123");
    }

    #[test]
    fn tables_align_columns() {
        let rows = vec![
            vec!["NAME".into(), "HEALTH".into()],
            vec!["server-10".into(), "up".into()],
        ];
        assert_eq!(table(&rows), "NAME       HEALTH\nserver-10  up\n");
    }
}
