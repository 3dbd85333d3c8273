from llm.grounding import ungrounded_numbers

FACTS = "A check-up and cleaning is 120 dollars. We open at 8:30 a.m. on weekdays; Saturday 9 a.m. to noon."


def test_grounded_digits_words_and_times() -> None:
    assert ungrounded_numbers("It's 120 dollars.", FACTS) == []
    assert ungrounded_numbers("A cleaning costs one hundred twenty dollars.", FACTS) == []
    assert ungrounded_numbers("We open at eight thirty.", FACTS) == []
    assert ungrounded_numbers("On Saturday from 9 until noon.", FACTS) == []


def test_invented_numbers_are_caught() -> None:
    assert ungrounded_numbers("It's 99 dollars.", FACTS) == ["99"]
    assert ungrounded_numbers("We close at seven.", FACTS) == ["7"]
    assert ungrounded_numbers("Whitening is three hundred dollars.", FACTS) == ["300"]


def test_no_numbers_is_grounded() -> None:
    assert ungrounded_numbers("Yes, we see children.", FACTS) == []
