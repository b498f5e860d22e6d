"""The consistent path: best subheading inside the best heading inside the best chapter (issue 12 point 6)."""

from __future__ import annotations

from types import SimpleNamespace

from services.code_path import consistent_path


def ranked(*pairs):
    return [SimpleNamespace(code=code, score=score) for code, score in pairs]


def test_the_levels_agree_and_nothing_is_said():
    path = consistent_path(
        {6: ranked(("610910", 0.7), ("610990", 0.2)), 4: ranked(("6109", 0.9)), 2: ranked(("61", 0.95))}
    )
    assert (path.subheading.code, path.heading.code, path.chapter.code) == ("610910", "6109", "61")
    assert path.complete and path.disagreement is None


def test_a_lone_subheading_of_another_chapter_gives_way_to_the_path_and_says_why():
    """The case seen: subheading 9617.00 on top, heading 8476 and chapter 84 ahead of it."""
    levels = {
        6: ranked(("961700", 0.30), ("847629", 0.22), ("847621", 0.20), ("847689", 0.15)),
        4: ranked(("8476", 0.57), ("9617", 0.30)),
        2: ranked(("84", 0.60), ("96", 0.30)),
    }
    path = consistent_path(levels)
    assert (path.subheading.code, path.heading.code, path.chapter.code) == ("847629", "8476", "84")
    assert "9617.00 (30%), is in chapter 96" in path.disagreement
    assert "more of the probability lies in chapter 84" in path.disagreement
    assert path.subheading.code[:4] == path.heading.code and path.heading.code[:2] == path.chapter.code


def test_a_path_that_cannot_be_completed_from_the_ranked_codes_is_said_plainly():
    levels = {6: ranked(("961700", 0.30), ("420292", 0.2)), 4: ranked(("8476", 0.5)), 2: ranked(("84", 0.55))}
    path = consistent_path(levels)
    assert not path.complete and path.heading.code == "8476" and path.subheading is None
    assert path.disagreement.startswith("The levels disagree") and "subheading of heading 8476" in path.disagreement
