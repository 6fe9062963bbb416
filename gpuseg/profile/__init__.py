"""Segment profiles: lifts, distinctive words, journey n-grams and rule-based persona names."""

from gpuseg.profile.actions import NextBestAction, next_best_action
from gpuseg.profile.lifts import (
    lifts_by_segment,
    representatives,
    segment_lifts,
    segment_means,
    segment_sizes,
    value_concentration,
)
from gpuseg.profile.naming import SegmentName, name_segments
from gpuseg.profile.ngrams import journey_ngrams, top_event_types
from gpuseg.profile.personas import (
    DEFAULT_RULES,
    PersonaAssignment,
    assign_personas,
    validate_rules,
)
from gpuseg.profile.words import distinctive_words, distinctive_words_by_source

__all__ = [
    "DEFAULT_RULES",
    "NextBestAction",
    "PersonaAssignment",
    "SegmentName",
    "assign_personas",
    "distinctive_words",
    "distinctive_words_by_source",
    "journey_ngrams",
    "lifts_by_segment",
    "name_segments",
    "next_best_action",
    "representatives",
    "segment_lifts",
    "segment_means",
    "segment_sizes",
    "top_event_types",
    "validate_rules",
    "value_concentration",
]
