//! Formatting for people: times, ages, tables.

pub(crate) use drover_kind::now_ms;

/// `42 s`, `3 min`, `5 h`, `2 d`.
pub(crate) fn duration_ms(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86400 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86400),
    }
}

/// How long ago `at` (Unix ms) was.
pub(crate) fn age(at: i64) -> String {
    duration_ms(now_ms() - at)
}

/// `2026-12-01 19:50:01 UTC`.
pub(crate) fn utc(at: i64) -> String {
    timestamp(at).strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// `19:50:01.123` (UTC).
pub(crate) fn utc_time_ms(at: i64) -> String {
    timestamp(at).strftime("%H:%M:%S%.3f").to_string()
}

/// `at` (Unix ms), clamped to the years jiff knows (-9999 to 9999).
fn timestamp(at: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_millisecond(at).unwrap_or(if at < 0 { jiff::Timestamp::MIN } else { jiff::Timestamp::MAX })
}

/// A table with a header, columns two spaces apart and as wide as their
/// widest cell (measured in terminal columns), without trailing spaces.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING).set_header(header.iter().copied());
    for row in rows {
        table.add_row(row.iter().map(String::as_str));
    }
    let last = header.len().saturating_sub(1);
    for (i, column) in table.column_iter_mut().enumerate() {
        column.set_padding((0, if i == last { 0 } else { 2 }));
    }
    let mut out = table.trim_fmt();
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_tables() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_764_619_801_000), "2025-12-01 20:10:01 UTC");
        assert_eq!(utc_time_ms(951_782_400_123), "00:00:00.123"); // 2000-02-29
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(-1), "1969-12-31 23:59:59 UTC");
        assert_eq!(utc_time_ms(-1), "23:59:59.999");
        assert!(utc(i64::MAX).starts_with("9999-12-30"), "{}", utc(i64::MAX)); // the most jiff knows
        assert_eq!(duration_ms(59_999), "59 s");
        assert_eq!(duration_ms(7_200_000), "2 h");
        let t = table(&["ID", "STATE"], &[vec!["a".into(), "running".into()], vec!["long-id".into(), "x".into()]]);
        assert_eq!(t, "ID       STATE\na        running\nlong-id  x\n");
        let wide = table(&["NAME", "X"], &[vec!["日本".into(), "1".into()], vec![String::new(), String::new()]]);
        assert_eq!(wide, "NAME  X\n日本  1\n\n");
    }
}
