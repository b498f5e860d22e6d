"""Guided classification in the app (AppTest, no towers): chips and questions, an answer re-ranks the candidates in
place and is stored as a broker-stated fact that the reviewer and the decision log see."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from db.decision_log import decision_log
from db.models import AuditEvent, BrokerFact, LineItem
from screens import common
from services.auth import Actor
from services.errors import InvalidInput, PermissionDenied
from services.guided import answer_question, broker_facts
from tests.test_app_classify import FakeClassifier, classify, signed_in
from tests.test_app_review import sign_in, texts


class GuidedClassifier(FakeClassifier):
    """A T-shirt whose material nobody stated: the model leans to 6109.90; the guidance is the real one."""

    def predict(self, text=None, images=(), top_k=5):
        import dataclasses

        from hs_model.predict import Candidate
        from hs_model.questions import guide

        raw = super().predict(text, images, top_k)
        levels = {
            6: [
                Candidate("610990", 6, "T-shirts, singlets and other vests; of textile materials", 0.70),
                Candidate("610910", 6, "T-shirts, singlets and other vests; of cotton, knitted or crocheted", 0.20),
                Candidate("610510", 6, "Shirts; men's or boys', of cotton, knitted or crocheted", 0.05),
            ],
            4: [
                Candidate("6109", 4, "T-shirts, singlets and other vests; knitted or crocheted", 0.90),
                Candidate("6105", 4, "Shirts; men's or boys', knitted or crocheted", 0.05),
            ],
            2: [Candidate("61", 2, "Apparel and clothing accessories; knitted or crocheted", 0.96)],
        }
        return guide(dataclasses.replace(raw, levels=levels, notes=()), text, top_k)


@pytest.fixture
def guided_classifier(monkeypatch: pytest.MonkeyPatch) -> GuidedClassifier:
    fake = GuidedClassifier()
    monkeypatch.setattr(common, "get_classifier", lambda model_dir: fake)
    return fake


def textile_pills(at):
    return next(b for b in at.button_group if b.key.endswith("_textile"))


def test_answer_reranks_in_place_and_is_kept_with_the_item(app_db, guided_classifier):
    at = classify(signed_in(app_db), "Wrangler Men Motor Rider Red T-Shirt")
    assert not at.exception and not at.error
    assert any("Men or boys" in m.value for m in at.markdown)  # the evidence chip: "Men" -> men's or boys'
    assert at.metric[0].value == "6109.90"
    pills = textile_pills(at)
    assert pills.label.startswith("Which textile material")
    at = pills.set_value("cotton").run()
    assert not at.exception and not at.error
    assert at.metric[0].value == "6109.10"  # re-ranked without running the model again
    assert guided_classifier.calls == 1
    with app_db.factory() as session:
        fact = session.scalars(select(BrokerFact)).one()
        audit = session.scalars(select(AuditEvent).where(AuditEvent.action == "broker_fact")).one()
    assert (fact.question, fact.answer, fact.answer_label) == ("textile", "cotton", "Of cotton")
    assert audit.detail["top_code"] == "610910"
    # submit, then the reviewer sees the answer and the decision log carries it
    at.button(key="classify_submit").click().run()
    assert not at.exception and not at.error
    at = sign_in(app_db, "rita", "reviewer")
    page = texts(at)
    assert "Broker-stated facts" in page and "**Of cotton**" in page
    with app_db.factory() as session:
        rows = decision_log(session)
    assert rows[0]["broker_facts"] == "textile=cotton (Of cotton)"


def test_only_the_items_broker_answers_and_only_offered_options(app_db, guided_classifier):
    app_db.add_user("bea", "broker", "correct horse battery")
    app_db.add_user("bob", "broker", "correct horse battery")
    from db.queries import find_user
    from services.classify import classify_and_record

    with app_db.factory.begin() as session:
        bea = Actor.from_user(find_user(session, "bea"))
        bob = Actor.from_user(find_user(session, "bob"))
        recorded = classify_and_record(session, guided_classifier, bea, text="T-shirt", photos=[])
    with app_db.factory.begin() as session, pytest.raises(PermissionDenied):
        answer_question(session, bob, recorded, "textile", "cotton")
    with app_db.factory.begin() as session, pytest.raises(InvalidInput, match="not an answer"):
        answer_question(session, bea, recorded, "textile", "kevlar")
    with app_db.factory.begin() as session:
        first = answer_question(session, bea, recorded, "textile", "cotton")
        second = answer_question(session, bea, first, "textile", "other_textile")  # changed: a new row
    assert second.prediction.top.code == "610990"
    with app_db.factory() as session:
        assert len(session.scalars(select(BrokerFact)).all()) == 2
        facts = broker_facts(session, bea, session.scalars(select(LineItem)).one().id)
    assert [(f.question, f.answer) for f in facts] == [("textile", "other_textile")]  # the latest is in force


def test_a_broker_fact_cannot_be_rewritten(app_db, guided_classifier):
    from db.models import AppendOnlyError

    test_answer_reranks_in_place_and_is_kept_with_the_item(app_db, guided_classifier)
    with app_db.factory() as session:
        fact = session.scalars(select(BrokerFact)).one()
        fact.answer = "other_textile"
        with pytest.raises(AppendOnlyError):
            session.flush()


def test_a_batch_line_opened_in_classify_gets_its_questions_and_answers_back(app_db, guided_classifier):
    """A stored line keeps its candidates, not the question pool: reopening runs the same model version again and
    uses its questions only when it ranks the stored candidates; answers given earlier apply again."""
    import dataclasses

    from db.queries import find_user
    from services.batch import open_line_item
    from services.classify import classify_and_record
    from services.guided import reopen_with_guidance

    app_db.add_user("bea", "broker", "correct horse battery")
    with app_db.factory.begin() as session:
        bea = Actor.from_user(find_user(session, "bea"))
        item_id = classify_and_record(session, guided_classifier, bea, text="T-shirt", photos=[]).line_item_id
    with app_db.factory() as session:
        opened = open_line_item(session, bea, item_id)
        assert opened.prediction.guidance is None  # what the database alone gives back
        back = reopen_with_guidance(session, guided_classifier, opened, "T-shirt")
    assert [q.key for q in back.prediction.guidance.questions] == ["textile"]
    assert [c.code for c in back.prediction.levels[6]] == [c.code for c in opened.prediction.levels[6]]
    with app_db.factory.begin() as session:
        answer_question(session, bea, back, "textile", "cotton")
    with app_db.factory() as session:
        again = reopen_with_guidance(session, guided_classifier, open_line_item(session, bea, item_id), "T-shirt")
        assert again.prediction.top.code == "610910" and again.prediction.guidance.answers == {"textile": "cotton"}
        # another model version ranks differently: the stored answer stands, without questions
        other = dataclasses.replace(opened, prediction=dataclasses.replace(opened.prediction, model_version="other"))
        assert reopen_with_guidance(session, guided_classifier, other, "T-shirt").prediction.guidance is None


def test_fine_tuning_learns_from_what_the_broker_stated(app_db, guided_classifier):
    """A reviewed item's training text carries the broker's answers ("don't know" and "none" say nothing)."""
    from db.queries import find_user
    from services import decisions
    from services.classify import classify_and_record
    from services.finetune import collect_reviewed

    app_db.add_user("bea", "broker", "correct horse battery")
    app_db.add_user("rita", "reviewer", "correct horse battery")
    with app_db.factory.begin() as session:
        bea = Actor.from_user(find_user(session, "bea"))
        rita = Actor.from_user(find_user(session, "rita"))
        stated = classify_and_record(session, guided_classifier, bea, text="T-shirt", photos=[])
        unsure = classify_and_record(session, guided_classifier, bea, text="T-shirt", photos=[])
        answer_question(session, bea, stated, "textile", "cotton")
        answer_question(session, bea, unsure, "textile", "unknown")
        for item, code in ((stated, "610910"), (unsure, "610990")):
            decisions.submit(session, bea, item.line_item_id, code, "the label says so")
            decisions.approve(session, rita, item.line_item_id, "")
    with app_db.factory() as session:
        texts = {i.line_item_id: i.text for i in collect_reviewed(session)}
    assert texts[stated.line_item_id] == "T-shirt (stated by the broker: of cotton)"
    assert texts[unsure.line_item_id] == "T-shirt"


class HeadingClassifier(FakeClassifier):
    """Goods the model cannot place: five headings offered first; the right one comes after "none of these"."""

    def predict(self, text=None, images=(), top_k=5):
        import dataclasses

        from hs_model.predict import Candidate
        from hs_model.questions import guide

        raw = super().predict(text, images, top_k)
        subs = {"950300": 0.3, "420292": 0.2, "392690": 0.15, "610910": 0.1, "490199": 0.1, "830630": 0.05}
        heads = {c[:4]: p for c, p in subs.items()}
        chaps = {c[:2]: p for c, p in subs.items()}
        levels = {
            lv: [Candidate(c, lv, "", p) for c, p in table.items()] for lv, table in ((6, subs), (4, heads), (2, chaps))
        }
        return guide(dataclasses.replace(raw, levels=levels, notes=()), text, top_k)


def test_none_of_these_headings_opens_the_next_ones_on_screen(app_db, monkeypatch):
    fake = HeadingClassifier()
    monkeypatch.setattr(common, "get_classifier", lambda model_dir: fake)
    at = classify(signed_in(app_db), "ornament")
    assert not at.exception and not at.error
    assert at.metric[0].value == "9503.00"
    heading = next(b for b in at.button_group if b.key.endswith("_heading"))
    assert not [b for b in at.button_group if b.key.endswith("_heading_more")]  # asked only after "none of these"
    at = heading.set_value("none").run()
    assert not at.exception and not at.error
    more = next(b for b in at.button_group if b.key.endswith("_heading_more"))
    assert more.label.startswith("None of those")
    at = more.set_value("8306").run()
    assert not at.exception and not at.error
    assert at.metric[0].value == "8306.30"
    assert fake.calls == 1  # re-ranked in place
    with app_db.factory() as session:
        facts = [(f.question, f.answer) for f in session.scalars(select(BrokerFact).order_by(BrokerFact.id))]
    assert facts == [("heading", "none"), ("heading_more", "8306")]
