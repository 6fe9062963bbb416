"""Customer journeys: event sequences, the LSTM journey encoder, and next-event baselines."""

from gpuseg.journey.baselines import MarkovBaseline, UnigramBaseline
from gpuseg.journey.model import JourneyEncoder, JourneyNet
from gpuseg.journey.sequences import SequenceBuilder, Sequences, Vocabulary

__all__ = ["JourneyEncoder", "JourneyNet", "MarkovBaseline", "SequenceBuilder", "Sequences",
           "UnigramBaseline", "Vocabulary"]
