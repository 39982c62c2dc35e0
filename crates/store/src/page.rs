//! Pages of the process list: which processes ([`ListFilter`]), how many at
//! once ([`PageLimit`]), and where the next page starts ([`Cursor`]).

use crate::store::{StoreError, StoredProcess};

/// The most processes one page holds.
pub const MAX_PAGE: usize = 10_000;
/// How many processes a page holds when the caller does not say.
pub const DEFAULT_PAGE: usize = 500;

/// Which processes a page lists: every given field must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// A status: a state's name (`queued`, `finished`, ...), `paused` (the
    /// paused processes that have not ended, and those in a state named so),
    /// or `active` (every process that has not ended).
    pub state: Option<String>,
    /// A kind.
    pub kind: Option<String>,
    /// Where it runs (a computer).
    pub place: Option<String>,
    /// Its parent: only its children.
    pub parent: Option<String>,
}

/// How many processes a page holds: from 1 to [`MAX_PAGE`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageLimit(usize);

impl PageLimit {
    /// `n`, if it is from 1 to [`MAX_PAGE`].
    ///
    /// # Errors
    ///
    /// [`StoreError::Invalid`], saying the range.
    pub fn new(n: usize) -> Result<PageLimit, StoreError> {
        if (1..=MAX_PAGE).contains(&n) {
            Ok(PageLimit(n))
        } else {
            Err(StoreError::Invalid(format!("a page holds from 1 to {MAX_PAGE} processes, not {n}")))
        }
    }

    /// How many.
    pub fn get(self) -> usize {
        self.0
    }
}

impl Default for PageLimit {
    fn default() -> PageLimit {
        PageLimit(DEFAULT_PAGE)
    }
}

/// Where a page starts: after the process created at `created_at` with id
/// `id`, in the list's order (`created_at`, then `id`). A keyset, not an
/// offset: a process inserted or removed meanwhile moves no other one
/// between pages.
///
/// Its text (`c1.<created_at>.<id in hex>`) is opaque to clients; `c1` is
/// its version, and a cursor of another version is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub(crate) created_at: i64,
    pub(crate) id: String,
}

const CURSOR_VERSION: &str = "c1";

impl Cursor {
    /// The cursor after `process`.
    pub fn after(process: &StoredProcess) -> Cursor {
        Cursor { created_at: process.created_at, id: process.id.clone() }
    }

    /// Reads a cursor's text, as its `Display` wrote it.
    ///
    /// # Errors
    ///
    /// [`StoreError::Invalid`] when it is not one (or of another version).
    pub fn parse(text: &str) -> Result<Cursor, StoreError> {
        let bad = || StoreError::Invalid(format!("`{text}` is not a cursor of this drover's lists"));
        let mut parts = text.splitn(3, '.');
        let (Some(version), Some(created_at), Some(hex)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        if version != CURSOR_VERSION || hex.len() % 2 != 0 {
            return Err(bad());
        }
        let created_at: i64 = created_at.parse().map_err(|_| bad())?;
        let bytes: Option<Vec<u8>> =
            (0..hex.len()).step_by(2).map(|i| hex.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok())).collect();
        let id = bytes.and_then(|b| String::from_utf8(b).ok()).ok_or_else(bad)?;
        Ok(Cursor { created_at, id })
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{CURSOR_VERSION}.{}.", self.created_at)?;
        self.id.bytes().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// One page of processes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// The processes, oldest first.
    pub processes: Vec<StoredProcess>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Cursor>,
}

/// Where a prune goes on: after the ended root process last looked at,
/// oldest first (`created_at`, then `id`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneCursor {
    pub(crate) created_at: i64,
    pub(crate) id: String,
}

/// One batch of a prune: the processes it removed (or, in a dry run, would
/// remove), whole families, and where the next batch starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PruneBatch {
    /// The processes, each family's children before their parent.
    pub processes: Vec<StoredProcess>,
    /// Where the next batch starts; `None` when no ended process is left
    /// to look at.
    pub next: Option<PruneCursor>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_read_back_and_foreign_text_is_refused() {
        let cursor = Cursor { created_at: 1_700_000_000_123, id: "run-a.b c/ü".into() };
        assert_eq!(Cursor::parse(&cursor.to_string()), Ok(cursor));
        for bad in ["", "c1", "c1.5", "c2.5.61", "c1.x.61", "c1.5.6", "c1.5.zz", "c1.5.ff", "61"] {
            assert!(matches!(Cursor::parse(bad), Err(StoreError::Invalid(_))), "{bad}");
        }
        assert!(PageLimit::new(0).is_err() && PageLimit::new(MAX_PAGE + 1).is_err());
        assert_eq!(PageLimit::new(MAX_PAGE).map(PageLimit::get), Ok(MAX_PAGE));
    }
}
