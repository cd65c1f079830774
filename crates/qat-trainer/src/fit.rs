//! The epoch loop both trainers run: train an epoch, score the monitoring split, record it,
//! write the checkpoint; until the schedule ends or a given number of epochs has run (a run
//! stopped that way continues with `load_checkpoint`, bit-identically).

use std::path::{Path, PathBuf};

use mixq_core::{Error, Result, RunDir};
use mixq_ptq::Metrics;

use crate::{EpochStats, FpTrainer, ImageSet, QatTrainer, StepStats};

/// A trainer that goes epoch by epoch: [`FpTrainer`] and [`QatTrainer`].
pub trait EpochTrainer {
    /// Every epoch of the schedule is trained.
    fn finished(&self) -> bool;
    /// Epochs trained so far (restored ones included).
    fn epochs_done(&self) -> usize;
    /// Epochs in the schedule.
    fn epochs(&self) -> usize;
    /// Images per step.
    fn batch(&self) -> usize;
    /// Trains the next epoch; `on_step` sees every step.
    fn train_epoch(
        &mut self,
        data: &ImageSet,
        on_step: &mut dyn FnMut(&StepStats),
    ) -> Result<EpochStats>;
    /// The model being trained on `data`.
    fn evaluate(&self, data: &ImageSet, batch: usize) -> Result<Metrics>;
    /// Records the monitoring split's top-1 of the last epoch.
    fn record_monitor_top1(&mut self, top1: f64);
    /// Writes the checkpoint atomically.
    fn save_checkpoint(&self, path: &Path) -> Result<()>;
    /// Restores a checkpoint of this very run.
    fn load_checkpoint(&mut self, path: &Path) -> Result<()>;
    /// Every finished epoch.
    fn history(&self) -> &[EpochStats];
}

macro_rules! epoch_trainer {
    (impl[$($generics:tt)*] $t:ty) => {
        impl<$($generics)*> EpochTrainer for $t {
            fn finished(&self) -> bool {
                <$t>::finished(self)
            }
            fn epochs_done(&self) -> usize {
                <$t>::epochs_done(self)
            }
            fn epochs(&self) -> usize {
                self.config().epochs
            }
            fn batch(&self) -> usize {
                self.config().batch
            }
            fn train_epoch(
                &mut self,
                data: &ImageSet,
                on_step: &mut dyn FnMut(&StepStats),
            ) -> Result<EpochStats> {
                <$t>::train_epoch(self, data, on_step)
            }
            fn evaluate(&self, data: &ImageSet, batch: usize) -> Result<Metrics> {
                <$t>::evaluate(self, data, batch)
            }
            fn record_monitor_top1(&mut self, top1: f64) {
                <$t>::record_monitor_top1(self, top1)
            }
            fn save_checkpoint(&self, path: &Path) -> Result<()> {
                <$t>::save_checkpoint(self, path)
            }
            fn load_checkpoint(&mut self, path: &Path) -> Result<()> {
                <$t>::load_checkpoint(self, path)
            }
            fn history(&self) -> &[EpochStats] {
                <$t>::history(self)
            }
        }
    };
}

epoch_trainer!(impl[] FpTrainer);
epoch_trainer!(impl[N: mixq_vit_models::Network + burn::module::Module + burn::module::ModuleDisplay] QatTrainer<N>);

/// How [`fit`] runs.
#[derive(Clone, Debug)]
pub struct FitConfig<'a> {
    /// Scored after every epoch (its top-1 goes into the history); `None`: nothing.
    pub monitor: Option<&'a ImageSet>,
    /// Batch size of that scoring.
    pub eval_batch: usize,
    /// Written after every epoch.
    pub checkpoint: &'a Path,
    /// Stop after this many epochs of this call, leaving the rest of the schedule.
    pub stop_after: Option<usize>,
}

/// What [`fit`] reports while it runs.
#[derive(Debug)]
pub enum FitEvent<'a> {
    /// An epoch begins.
    EpochStart {
        /// 1-based.
        epoch: usize,
        /// Its steps.
        steps: usize,
    },
    /// A step finished.
    Step(&'a StepStats),
    /// An epoch finished and its checkpoint is written.
    EpochEnd {
        /// Its figures (monitor top-1 included).
        stats: &'a EpochStats,
        /// The whole history so far.
        history: &'a [EpochStats],
    },
}

/// How [`fit`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FitOutcome {
    /// Every epoch of the schedule is trained.
    Finished,
    /// `stop_after` epochs ran; the checkpoint continues the schedule.
    Stopped,
}

/// Trains `trainer` on `train` to the end of its schedule (or `stop_after` epochs), scoring
/// `config.monitor` and writing `config.checkpoint` after every epoch. `on` sees every event;
/// an error it returns stops training.
pub fn fit<T: EpochTrainer + ?Sized>(
    trainer: &mut T,
    train: &ImageSet,
    config: &FitConfig,
    mut on: impl FnMut(FitEvent) -> Result<()>,
) -> Result<FitOutcome> {
    let mut this_run = 0;
    while !trainer.finished() {
        if config.stop_after.is_some_and(|n| this_run >= n) {
            return Ok(FitOutcome::Stopped);
        }
        on(FitEvent::EpochStart {
            epoch: trainer.epochs_done() + 1,
            steps: train.len().div_ceil(trainer.batch()),
        })?;
        let mut failed = None;
        let mut stats = trainer.train_epoch(train, &mut |s| {
            if failed.is_none()
                && let Err(e) = on(FitEvent::Step(s))
            {
                failed = Some(e);
            }
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        if let Some(monitor) = config.monitor {
            let top1 = trainer.evaluate(monitor, config.eval_batch)?.top1_pct();
            trainer.record_monitor_top1(top1);
            stats.monitor_top1 = Some(top1);
        }
        trainer.save_checkpoint(config.checkpoint)?;
        tracing::info!(
            epoch = stats.epoch,
            loss = stats.train_loss,
            train_top1 = stats.train_top1,
            monitor_top1 = stats.monitor_top1,
            seconds = stats.seconds,
            "epoch"
        );
        on(FitEvent::EpochEnd {
            stats: &stats,
            history: trainer.history(),
        })?;
        this_run += 1;
    }
    Ok(FitOutcome::Finished)
}

/// A training run's folder and the checkpoint written into it every epoch (`train`, `qat`).
/// Made once the trainer is set up, so that bad input leaves no folder behind; a resumed run's
/// folder starts with the checkpoint it continues from.
#[derive(Debug)]
pub struct TrainingRun {
    /// The run folder (`.partial` until finished).
    pub dir: RunDir,
    /// Written after every epoch.
    pub checkpoint: PathBuf,
    /// The checkpoint this run continued from.
    pub resumed_from: Option<PathBuf>,
}

impl TrainingRun {
    /// The checkpoint `resume` points at: a run folder holding `file` (finished or `.partial`),
    /// or the file itself. Errors name `--resume` and the `command` whose runs hold `file`.
    pub fn resume_checkpoint(
        resume: Option<&Path>,
        file: &str,
        command: &str,
    ) -> Result<Option<PathBuf>> {
        let Some(dir) = resume else {
            return Ok(None);
        };
        let path = if dir.is_file() {
            dir.to_path_buf()
        } else {
            dir.join(file)
        };
        if !path.is_file() {
            return Err(Error::invalid(
                "--resume",
                dir.display(),
                format!(
                    "holds no {file} (pass the folder of a {command} run, finished or .partial)"
                ),
            ));
        }
        Ok(Some(path))
    }

    /// Restores `trainer` from `resumed_from` (a checkpoint of this very run), then creates a
    /// `command` run folder under `runs` whose checkpoint is `file`.
    pub fn start<T: EpochTrainer + ?Sized>(
        trainer: &mut T,
        runs: &Path,
        command: &str,
        file: &str,
        resumed_from: Option<PathBuf>,
    ) -> Result<Self> {
        if let Some(from) = &resumed_from {
            trainer.load_checkpoint(from)?;
        }
        let dir = RunDir::create(runs, command)?;
        let checkpoint = dir.file(file);
        if resumed_from.is_some() {
            trainer.save_checkpoint(&checkpoint)?;
        }
        Ok(Self {
            dir,
            checkpoint,
            resumed_from,
        })
    }

    /// The unfinished run's folder, which `--resume` takes to continue it.
    pub fn partial_dir(&self) -> &Path {
        self.checkpoint.parent().unwrap_or(Path::new("."))
    }

    /// How [`fit`] trains into this run's checkpoint.
    pub fn fit_config<'a>(
        &'a self,
        monitor: Option<&'a ImageSet>,
        eval_batch: usize,
        stop_after: Option<usize>,
    ) -> FitConfig<'a> {
        FitConfig {
            monitor,
            eval_batch,
            checkpoint: &self.checkpoint,
            stop_after,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FpConfig, FpTrainer};
    use burn::tensor::Device;
    use mixq_vit_models::ModelCard;

    fn trainer(epochs: usize) -> FpTrainer {
        let card = ModelCard::find("digits-deit").unwrap();
        let config = FpConfig {
            epochs,
            batch: 4,
            lr: 1e-3,
            weight_decay: 0.05,
            seed: 0,
            shift: 1,
            shift_fill: 0.0,
            hflip: false,
            label_smoothing: 0.0,
            workers: 1,
        };
        FpTrainer::new(&card.name, &card.arch, &Device::flex(), config).unwrap()
    }

    #[test]
    fn fit_monitors_checkpoints_and_stops_where_asked() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoint = dir.path().join("ckpt.safetensors");
        let data = ImageSet::new(
            (0..8 * 64).map(|i| (i % 7) as f32 / 7.0).collect(),
            [1, 8, 8],
            (0..8).map(|i| i % 10).collect(),
        )
        .unwrap();
        let mut t = trainer(3);
        let config = FitConfig {
            monitor: Some(&data),
            eval_batch: 8,
            checkpoint: &checkpoint,
            stop_after: Some(2),
        };
        let (mut starts, mut steps, mut ends) = (Vec::new(), 0, Vec::new());
        let outcome = fit(&mut t, &data, &config, |e| {
            match e {
                FitEvent::EpochStart { epoch, steps } => starts.push((epoch, steps)),
                FitEvent::Step(_) => steps += 1,
                FitEvent::EpochEnd { stats, history } => {
                    assert!(stats.monitor_top1.is_some());
                    assert_eq!(history.last(), Some(stats));
                    ends.push(stats.epoch)
                }
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(outcome, FitOutcome::Stopped);
        assert_eq!(starts, [(1, 2), (2, 2)]);
        assert_eq!((steps, ends), (4, vec![1, 2]));
        assert!(checkpoint.is_file());

        // The checkpoint continues the schedule: one epoch is left.
        let mut resumed = trainer(3);
        resumed.load_checkpoint(&checkpoint).unwrap();
        let config = FitConfig {
            stop_after: None,
            monitor: None,
            ..config
        };
        let mut left = 0;
        let outcome = fit(&mut resumed, &data, &config, |e| {
            left += matches!(e, FitEvent::EpochEnd { .. }) as usize;
            Ok(())
        })
        .unwrap();
        assert_eq!((outcome, left), (FitOutcome::Finished, 1));
        assert_eq!(resumed.history().len(), 3);
    }

    #[test]
    fn a_training_run_continues_from_the_checkpoint_of_an_unfinished_one() {
        let runs = tempfile::tempdir().unwrap();
        let data = ImageSet::new(vec![0.5; 4 * 64], [1, 8, 8], vec![1; 4]).unwrap();
        let file = "ckpt.safetensors";
        let mut first = trainer(2);
        let run = TrainingRun::start(&mut first, runs.path(), "train", file, None).unwrap();
        assert!(run.resumed_from.is_none() && !run.checkpoint.exists());
        let config = run.fit_config(None, 8, Some(1));
        assert_eq!(
            fit(&mut first, &data, &config, |_| Ok(())).unwrap(),
            FitOutcome::Stopped
        );

        // `--resume` takes the unfinished folder (or the file); anything else is named.
        let folder = run.partial_dir();
        let from = TrainingRun::resume_checkpoint(Some(folder), file, "train").unwrap();
        assert_eq!(from.as_deref(), Some(run.checkpoint.as_path()));
        let e = TrainingRun::resume_checkpoint(Some(runs.path()), file, "train").unwrap_err();
        assert!(e.to_string().contains("--resume") && e.to_string().contains(file));
        assert_eq!(
            TrainingRun::resume_checkpoint(None, file, "train").unwrap(),
            None
        );

        let mut second = trainer(2);
        let resumed = TrainingRun::start(&mut second, runs.path(), "train", file, from).unwrap();
        assert_eq!(second.epochs_done(), 1);
        assert_ne!(resumed.checkpoint, run.checkpoint);
        // The new folder starts with the state it continues from.
        let mut third = trainer(2);
        third.load_checkpoint(&resumed.checkpoint).unwrap();
        assert_eq!(third.epochs_done(), 1);
        assert!(third.param_values() == first.param_values());
    }

    #[test]
    fn an_error_from_the_caller_stops_training() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoint = dir.path().join("ckpt.safetensors");
        let data = ImageSet::new(vec![0.5; 4 * 64], [1, 8, 8], vec![1; 4]).unwrap();
        let mut t = trainer(2);
        let config = FitConfig {
            monitor: None,
            eval_batch: 8,
            checkpoint: &checkpoint,
            stop_after: None,
        };
        let e = fit(&mut t, &data, &config, |e| match e {
            FitEvent::EpochEnd { .. } => Err(mixq_core::Error::invalid("log", "x", "full disk")),
            _ => Ok(()),
        });
        assert!(e.is_err());
        assert_eq!(t.epochs_done(), 1);
    }
}
