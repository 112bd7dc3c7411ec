"""Where a run stands, as its checkpoints record it (their metadata holds `to_meta()`)."""
import dataclasses
import math


@dataclasses.dataclass
class RunPosition:
  """`epoch` epochs done, then `epoch_step` steps of the next (with their metric sums, kept for a
  resume in the middle of an epoch); the history of epoch records and the summary's totals."""
  epoch: int = 0
  epoch_step: int = 0
  epoch_sums: list = dataclasses.field(default_factory=list)
  epoch_s: float = 0.0
  history: list = dataclasses.field(default_factory=list)
  best_test_accuracy: float = 0.0
  best_val_accuracy: float = 0.0  # with a validation set, what picks the best checkpoint
  train_s: float = 0.0
  compile_s: float = 0.0
  images: int = 0
  step_s: float = 0.0

  @classmethod
  def from_meta(cls, meta: dict) -> 'RunPosition':
    """From a checkpoint's metadata (keys a run saved before they existed: their default)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in meta.items() if k in names})

  def to_meta(self) -> dict:
    return dataclasses.asdict(self)

  @property
  def started(self) -> bool:
    return bool(self.epoch or self.epoch_step)

  def where(self, steps_per_epoch: int) -> str:
    if self.epoch_step:
      return f'epoch {self.epoch + 1} step {self.epoch_step} of {steps_per_epoch}'
    return f'epoch {self.epoch}'

  def account(self, images: int, seconds: float, steps: int, host_sums=None) -> None:
    """Adds the epoch's steps just run: `steps` of it done now, `images` more trained on in
    `seconds`; `host_sums` (lists in progress.SUM_KEYS order) when the epoch is unfinished."""
    self.images += images
    self.step_s += seconds
    self.epoch_s += seconds
    self.train_s += seconds
    self.epoch_step = steps
    if host_sums is not None:
      self.epoch_sums = host_sums

  def end_epoch(self, record: dict, best_on: str = 'test') -> bool:
    """Records a finished epoch; returns whether its accuracy on `best_on` ('test', or 'val'
    with a validation set) is a new best."""
    self.epoch, self.epoch_step, self.epoch_sums, self.epoch_s = record['epoch'], 0, [], 0.0
    self.history.append(record)
    accuracy, best = record.get(f'{best_on}_accuracy'), f'best_{best_on}_accuracy'
    new_best = accuracy is not None and accuracy > getattr(self, best)
    setattr(self, best, max(getattr(self, best), accuracy or 0.0))
    return new_best

  def summary(self, name: str, num_epochs: int, device: str, best_on: str = 'test') -> dict:
    """The run's figures, each named by the set it comes from; 'best_on' says which set chose
    the best epoch ('test': an optimistic figure, the test set having picked it)."""
    finished = self.epoch == num_epochs
    last = (self.history or [{}])[-1].get('test_accuracy', math.nan)
    best = f'best_{best_on}_accuracy'
    return {'config': name, 'epochs': self.epoch, 'num_epochs': num_epochs,
            'finished': finished, 'last_test_accuracy': last,
            'final_test_accuracy': last if finished else math.nan,
            best: getattr(self, best), 'best_on': best_on, 'train_s': self.train_s,
            'compile_s': self.compile_s,
            'img_per_s': self.images / self.step_s if self.step_s else 0.0, 'device': device}
