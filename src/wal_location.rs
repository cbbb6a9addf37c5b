//! Where an instance's WAL lives: local segment files (the embedded default) or a Pulsar
//! topic. Opens the sink that writes it and the sources that read it from a snapshot on.

use std::path::PathBuf;

use crate::snapshot::Manifest;
use crate::wal::{LocalSegmentSink, LocalSegmentSource, SegmentSettings, WalSink, WalSource};

use crate::error::Result;

#[derive(Debug, Clone)]
pub(crate) enum WalLocation {
    Local {
        dir: PathBuf,
        settings: SegmentSettings,
    },
    #[cfg(feature = "pulsar")]
    Pulsar(crate::wal::pulsar::PulsarSettings),
}

impl WalLocation {
    /// The sink a new writer appends to. A Pulsar sink takes the topic over from an older
    /// instance still connected (its producer is fenced by the broker).
    pub(crate) fn sink(&self) -> Result<Box<dyn WalSink>> {
        Ok(match self {
            WalLocation::Local { dir, settings } => {
                Box::new(LocalSegmentSink::open(dir, settings.clone())?)
            }
            #[cfg(feature = "pulsar")]
            WalLocation::Pulsar(settings) => {
                let settings = crate::wal::pulsar::PulsarSettings {
                    take_over: true,
                    ..settings.clone()
                };
                Box::new(crate::wal::pulsar::PulsarSink::connect(settings)?)
            }
        })
    }

    /// Reads the log from the batch holding `after`'s commit marker (the whole log without a
    /// snapshot).
    pub(crate) fn source(&self, after: &Manifest) -> Result<Box<dyn WalSource>> {
        Ok(match self {
            WalLocation::Local { dir, .. } => {
                Box::new(LocalSegmentSource::open(dir, after.lsn + 1)?)
            }
            #[cfg(feature = "pulsar")]
            WalLocation::Pulsar(settings) => {
                // A position from another kind of WAL (the job moved from local segments to
                // Pulsar) says nothing about this topic: read it whole.
                let start = after
                    .wal_position
                    .as_ref()
                    .filter(|p| matches!(p, crate::wal::WalPosition::Pulsar { .. }));
                Box::new(crate::wal::pulsar::PulsarSource::open(
                    settings.clone(),
                    start,
                )?)
            }
        })
    }
}
