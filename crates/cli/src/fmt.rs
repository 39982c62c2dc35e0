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
    let (date, time) = utc_parts(at);
    format!("{date} {time} UTC")
}

/// `19:50:01.123` (UTC).
pub(crate) fn utc_time_ms(at: i64) -> String {
    let (_, time) = utc_parts(at);
    format!("{time}.{:03}", at.rem_euclid(1000))
}

fn utc_parts(at: i64) -> (String, String) {
    let secs = at.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (format!("{year:04}-{month:02}-{day:02}"), format!("{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60))
}

/// A table with a header, columns padded to their widest cell (the last one
/// is not padded).
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_owned()
    };
    let mut out = line(header.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
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
        assert_eq!(utc_parts(951_782_400_000).0, "2000-02-29");
        assert_eq!(duration_ms(59_999), "59 s");
        assert_eq!(duration_ms(7_200_000), "2 h");
        let t = table(&["ID", "STATE"], &[vec!["a".into(), "running".into()], vec!["long-id".into(), "x".into()]]);
        assert_eq!(t, "ID       STATE\na        running\nlong-id  x\n");
    }
}
