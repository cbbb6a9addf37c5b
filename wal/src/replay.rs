//! Replay with a closure: apply every committed change of a log, in order. A convenience loop
//! over [`Committed`]; the rules are [`WalReader`](crate::WalReader)'s.

use crate::committed::Committed;
use crate::error::{Error, Result};
use crate::reader::ReplayOutcome;
use crate::record::OwnedChange;
use crate::sink::WalSource;

/// Replays `source` from after `after_lsn` (the LSN a snapshot covers, 0 for the whole log),
/// calling `apply` for each committed change in order. A failure of `apply` is
/// [`Error::Apply`], with the LSN of the commit marker of its unit.
pub fn replay<E>(
    source: &mut dyn WalSource,
    after_lsn: u64,
    mut apply: impl FnMut(&OwnedChange) -> Result<(), E>,
) -> Result<ReplayOutcome>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let mut units = Committed::new(source, after_lsn);
    while let Some(unit) = units.next()? {
        for (_, change) in unit.changes() {
            apply(change).map_err(|source| Error::Apply {
                lsn: unit.point().lsn,
                source: Box::new(source),
            })?;
        }
    }
    Ok(units.into_outcome())
}
