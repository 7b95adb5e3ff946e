"""Stop strings over streamed pieces (engine.stops), and the API's log-probabilities (engine.logprobs)."""

import math

import numpy as np
import pytest

from engine.logprobs import log_softmax, logprobs, top_ids
from engine.stops import StopMatcher

# --- log-probabilities


def test_logprobs_top_k():
    logits = np.array([1.0, 3.0, 2.0, 3.0], dtype=np.float32)
    lp = log_softmax(logits)
    assert np.exp(lp).sum() == pytest.approx(1.0)
    top = logprobs(logits, 3)
    assert [t for t, _ in top] == [1, 3, 2]  # tie: lower id first
    assert top[0][1] == pytest.approx(3.0 - math.log(math.exp(1) + math.exp(2) + 2 * math.exp(3)))
    assert len(logprobs(logits, 10)) == 4 and logprobs(logits, 0) == []
    assert list(top_ids(log_softmax(logits), 2)) == [1, 3]


# --- stop strings


def feed_all(m: StopMatcher, pieces):
    out, stopped = [], False
    for piece in pieces:
        text, stopped = m.feed(piece)
        out.append(text)
        if stopped:
            break
    return out, stopped


def test_stop_split_across_pieces():
    m = StopMatcher(["</s>"])
    assert feed_all(m, ["Hello <", "/s", ">more"]) == (["Hello ", "", ""], True)
    assert m.stop_string == "</s>"
    assert m.feed("anything") == ("", True) and m.flush() == ""


def test_partial_match_that_fails_is_released():
    m = StopMatcher(["</s>"])
    assert feed_all(m, ["a <", "b", "</", "x"]) == (["a ", "<b", "", "</x"], False)
    assert m.flush() == ""
    m = StopMatcher(["STOP"])
    assert m.feed("text ST") == ("text ", False)
    assert m.flush() == "ST"  # generation ended: the held-back text is emitted


def test_stop_at_the_very_start_and_inside_a_piece():
    m = StopMatcher(["STOP"])
    assert m.feed("STOP and more") == ("", True)
    m = StopMatcher(["STOP"])
    assert m.feed("foo STOP bar") == ("foo ", True)


def test_overlapping_partial_matches():
    m = StopMatcher(["abcabd"])
    assert m.feed("abcab") == ("", False)
    assert m.feed("c") == ("abc", False)  # "abcabc": only the last "abc" can still start the stop
    assert m.feed("abd") == ("", True)  # the text was "abcabcabd": the stop starts at 3
    m = StopMatcher(["aab"])
    assert feed_all(m, ["a", "a", "a", "b"]) == (["", "", "a", ""], True)


def test_multiple_stop_strings():
    m = StopMatcher(["world", "wor!"])
    assert m.feed("hello wor") == ("hello ", False)
    assert m.feed("!") == ("", True) and m.stop_string == "wor!"
    m = StopMatcher(["lo", "hello"])
    assert m.feed("say hello") == ("say ", True) and m.stop_string == "hello"  # earliest position
    m = StopMatcher(["abc", "ab"])
    assert m.feed("xabc") == ("x", True) and m.stop_string == "abc"  # same position: first listed
    m = StopMatcher(["xyz", "b"])
    assert m.feed("ax") == ("a", False)
    assert m.feed("b") == ("x", True) and m.stop_string == "b"


def test_no_stops_passthrough():
    m = StopMatcher([])
    assert m.feed("abc") == ("abc", False)
    m = StopMatcher(None)
    assert m.feed("") == ("", False) and m.flush() == ""
    m = StopMatcher([""])  # empty stop strings are ignored
    assert m.feed("abc") == ("abc", False)
