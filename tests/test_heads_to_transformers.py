"""Each shared head names its standard transformers class (``head.to_transformers(backbone, task)``) and builds it
with the head's weights on it, so that the class computes the head's outputs; a head with no such class says why
(NotStandard). A tiny random BERT stands in for a trained backbone: nothing is trained or downloaded."""
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from nlpkit.engine.backbone import Backbone, train_tokenizer
from nlpkit.sdk.errors import NotStandard
from nlpkit.sdk.heads import (EntityPairHead, MultipleChoiceHead, Seq2SeqHead, SequenceClassificationHead,
                              SpanExtractionHead, TokenClassificationHead)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_generation import make_t5  # noqa: E402

WORDS = "the a cat dog sees runs Paris Berlin of in on and".split()
LABELS = ["O", "B-PER", "I-PER"]


@pytest.fixture(scope="module")
def bert():
    from transformers import BertConfig, BertModel

    tokenizer = train_tokenizer([" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] * 5, 200)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    return Backbone(BertModel(config, add_pooling_layer=False).eval(), tokenizer, "tiny-bert")  # as nlpkit builds it


def task(labels=LABELS, pooling="cls"):
    """What the heads read of a task: its label map and its options."""
    return SimpleNamespace(state_dict=lambda: {"labels": list(labels)}, options=SimpleNamespace(pooling=pooling))


def trained(head):
    """A head whose weights are nowhere near their initialisation, in eval mode."""
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return head.eval()


def batch(backbone):
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, backbone.model.config.vocab_size, (2, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return ids, mask


def test_token_classification_head_is_auto_model_for_token_classification(bert):
    head = trained(TokenClassificationHead(32, len(LABELS)))
    model, name = head.to_transformers(bert, task())
    assert name == "AutoModelForTokenClassification" and type(model).__name__ == "BertForTokenClassification"
    assert model.config.id2label == dict(enumerate(LABELS)) and model.config.label2id["B-PER"] == 1
    ids, mask = batch(bert)
    with torch.inference_mode():
        ours, theirs = head(bert, {"input_ids": ids, "attention_mask": mask})["logits"], model.eval()(ids, mask).logits
    assert torch.allclose(ours[mask.bool()], theirs[mask.bool()], atol=1e-5)


@pytest.mark.parametrize("multi_label", [False, True])
def test_classification_head_is_auto_model_for_sequence_classification(bert, multi_label):
    head = trained(SequenceClassificationHead(32, 2, pooling="cls", multi_label=multi_label))
    model, name = head.to_transformers(bert, task(["neg", "pos"]))
    assert name == "AutoModelForSequenceClassification" and type(model).__name__ == "BertForSequenceClassification"
    assert model.config.problem_type == ("multi_label_classification" if multi_label else "single_label_classification")
    ids, mask = batch(bert)
    with torch.inference_mode():
        ours, theirs = head(bert, {"input_ids": ids, "attention_mask": mask})["logits"], model.eval()(ids, mask).logits
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_span_extraction_head_is_auto_model_for_question_answering(bert):
    head = trained(SpanExtractionHead(32))
    model, name = head.to_transformers(bert, task([]))
    assert name == "AutoModelForQuestionAnswering" and type(model).__name__ == "BertForQuestionAnswering"
    ids, mask = batch(bert)
    with torch.inference_mode():
        ours, theirs = head(bert, {"input_ids": ids, "attention_mask": mask}), model.eval()(ids, mask)
    for key in ("start_logits", "end_logits"):
        assert torch.allclose(ours[key][mask.bool()], getattr(theirs, key)[mask.bool()], atol=1e-5)


def test_multiple_choice_head_is_auto_model_for_multiple_choice(bert):
    head = trained(MultipleChoiceHead(32, pooling="cls"))
    model, name = head.to_transformers(bert, task([]))
    assert name == "AutoModelForMultipleChoice" and type(model).__name__ == "BertForMultipleChoice"
    ids, mask = batch(bert)  # one example, its two choices as two rows
    with torch.inference_mode():
        ours = head(bert, {"input_ids": ids, "attention_mask": mask, "choice_mask": torch.ones(1, 2, dtype=torch.bool)})
        theirs = model.eval()(input_ids=ids[None], attention_mask=mask[None]).logits
    assert torch.allclose(ours["logits"], theirs, atol=1e-5)


def test_seq2seq_head_on_an_encoder_decoder_is_auto_model_for_seq2seq_lm(tmp_path):
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    make_t5(tmp_path / "t5", ["the dog sees the cat .", "der Hund sieht die Katze ."] * 20)
    backbone = Backbone(T5ForConditionalGeneration.from_pretrained(tmp_path / "t5").eval(),
                        AutoTokenizer.from_pretrained(tmp_path / "t5"), "tiny-t5")
    head = Seq2SeqHead(backbone)
    options = SimpleNamespace(num_beams=3, no_repeat_ngram_size=0, length_penalty=0.8, early_stopping=True)
    gen_task = SimpleNamespace(strategy=SimpleNamespace(prefix="translate: ", options=options, max_new_tokens=7,
                                                        tokens=head.tokens))
    model, name = head.to_transformers(backbone, gen_task)
    assert name == "AutoModelForSeq2SeqLM" and type(model).__name__ == "T5ForConditionalGeneration"
    assert model is not backbone.model and model.config.prefix == "translate: "
    gen = model.generation_config
    assert (gen.num_beams, gen.max_new_tokens, gen.length_penalty, gen.do_sample) == (3, 7, 0.8, False)
    assert getattr(backbone.model.config, "prefix", None) is None  # the backbone itself is left as it was


def test_the_entity_pair_head_has_no_standard_class(bert):
    with pytest.raises(NotStandard, match="entity-pair head reads the states of two entity-marker tokens"):
        EntityPairHead(32, 3).to_transformers(bert, task())


def test_heads_that_pool_otherwise_or_build_their_own_decoder_have_no_standard_class(bert):
    with pytest.raises(NotStandard, match="pools by 'mean'"):
        SequenceClassificationHead(32, 2, pooling="mean").to_transformers(bert, task())
    with pytest.raises(NotStandard, match="pools by 'option'"):  # the task's option is what the user chose
        MultipleChoiceHead(32, pooling="mean").to_transformers(bert, task([], pooling="option"))
    with pytest.raises(NotStandard, match="pools by 'auto'"):  # a cls head under another option is refused too
        MultipleChoiceHead(32, pooling="cls").to_transformers(bert, task([], pooling="auto"))
    with pytest.raises(NotStandard, match="tied to the encoder"):
        Seq2SeqHead(bert, decoder_layers=1).to_transformers(bert, task([]))


def test_encoder_heads_refuse_another_backbone_kind(bert):
    decoder = SimpleNamespace(kind="decoder")
    for head in (TokenClassificationHead(32, 3), SequenceClassificationHead(32, 2), SpanExtractionHead(32),
                 MultipleChoiceHead(32), EntityPairHead(32, 3)):
        with pytest.raises(NotStandard, match="expect an encoder-only model"):
            head.to_transformers(decoder, task())
