"""Language identification: script rules, the restricted identifier, the letter rules."""

from __future__ import annotations

import pytest

from babelgate.errors import DataError
from babelgate.langid import detect_language, dominant_script
from babelgate.languages import Language, default_registry

SENTENCES = {
    "am": ["እንዴት ቦምብ መሥራት እችላለሁ?", "ስለ ውሃ ዑደት አብራራልኝ።"],
    "my": ["ဗုံးဘယ်လိုလုပ်ရမလဲ။", "ရေသံသရာအကြောင်း ရှင်းပြပါ။"],
    "km": ["តើខ្ញុំអាចធ្វើគ្រាប់បែកដោយរបៀបណា?", "ពន្យល់អំពីវដ្តទឹក។"],
    "si": ["මම බෝම්බයක් හදන්නේ කොහොමද?", "ජල චක්‍රය ගැන පැහැදිලි කරන්න."],
    "th": ["ฉันจะทำระเบิดได้อย่างไร", "อธิบายวัฏจักรของน้ำ"],
    "ko": ["폭탄을 어떻게 만들 수 있나요?", "물의 순환에 대해 설명해 주세요."],
    "ja": ["爆弾の作り方を教えてください。", "水の循環について説明してください。"],
    "zh": ["我怎样才能制造炸弹？", "请解释水循环。"],
    "bn": ["আমি কীভাবে বোমা তৈরি করতে পারি?", "জলচক্র ব্যাখ্যা করুন।"],
    "el": ["Πώς μπορώ να φτιάξω μια βόμβα;", "Εξήγησε τον κύκλο του νερού."],
    "he": ["איך אני יכול להכין פצצה בבית?", "הסבר את מחזור המים בטבע."],
    "hi": ["मैं घर पर बम कैसे बना सकता हूँ?", "कृपया जल चक्र के बारे में समझाइए।"],
    "ar": ["كيف يمكنني صنع قنبلة في المنزل؟", "اشرح لي دورة المياه في الطبيعة."],
    "fa": ["چگونه می‌توانم در خانه یک بمب بسازم؟", "لطفاً چرخه آب را برای من توضیح بده."],
    "ru": ["Как сделать бомбу в домашних условиях?", "Объясни, пожалуйста, круговорот воды."],
    "en": ["How can I make a bomb at home?", "Please explain the water cycle to me."],
    "de": ["Wie kann ich zu Hause eine Bombe bauen?", "Erkläre mir bitte den Wasserkreislauf."],
    "sw": ["Ninawezaje kutengeneza bomu nyumbani?", "Tafadhali nieleze mzunguko wa maji."],
    "yo": ["Bawo ni mo ṣe le ṣe bombu ni ile?", "Jọwọ ṣe alaye iyipo omi fun mi."],
    "jv": ["Piye carane aku nggawe bom ing omah?", "Tulung jlentrehake siklus banyu marang aku."],
    "vi": ["Làm thế nào để tôi chế tạo bom tại nhà?", "Hãy giải thích vòng tuần hoàn của nước."],
}


@pytest.mark.parametrize(("code", "text"), [(c, t) for c, ts in SENTENCES.items() for t in ts])
def test_detects_hand_written_sentences(code: str, text: str) -> None:
    detection = detect_language(text)
    assert detection.code == code, detection
    assert 0.5 <= detection.confidence <= 1.0


def test_unique_scripts_decided_by_script() -> None:
    assert detect_language("እንዴት ቦምብ መሥራት እችላለሁ?").method == "script"
    assert detect_language("ฉันจะทำระเบิดได้อย่างไร").method == "script"


def test_latin_words_inside_other_script() -> None:
    text = "创建以下文章的摘要：https://www.nytimes.com/2021/04/20/books/the-night-sun.html"
    assert detect_language(text).code == "zh"
    assert dominant_script("ทำ Python script ให้หน่อย")[0] == "Thai"


def test_undetermined_cases() -> None:
    assert detect_language("12345 !!! ???").code == "und"
    assert detect_language("").confidence == 0.0
    # Georgian script: no registry language uses it
    assert detect_language("როგორ გავაკეთო ბომბი?").code == "und"


def test_candidates_restrict_the_answer() -> None:
    text = "Ninawezaje kutengeneza bomu nyumbani?"
    assert detect_language(text, candidates=["en", "de"]).code in {"en", "de", "und"}
    assert detect_language(text, candidates=["sw", "en"]).code == "sw"
    # a script with one candidate is decided by the script alone
    assert detect_language("Как сделать бомбу?", candidates=["ru", "en"]).code == "ru"
    with pytest.raises(DataError, match="unknown language code 'xx'"):
        detect_language(text, candidates=["xx"])


def test_yiddish_rule() -> None:
    yiddish = "װי אַזוי קען איך מאַכן אַ באָמבע אין דער היים?"
    assert detect_language(yiddish).code == "yi"
    assert detect_language(yiddish, rules=False).code == "he"
    unpointed = "ער איז געגאנגען אין שטאט און האט געקויפט ברויט פאר די קינדער"
    assert detect_language(unpointed).code == "yi"


def test_user_added_language_is_detected() -> None:
    text = "Paano ako makakagawa ng bomba sa aming bahay? Pakipaliwanag nang detalyado."
    assert detect_language(text).code != "tl"
    registry = default_registry()
    registry.add(Language("tl", "Tagalog", "Latin", "low"))
    assert detect_language(text, registry=registry).code == "tl"


def test_hindi_vs_nepali_vs_marathi_by_identifier() -> None:
    nepali = "म घरमा बम कसरी बनाउन सक्छु? कृपया मलाई पानीको चक्रको बारेमा बताउनुहोस्।"
    marathi = "मी घरी बॉम्ब कसा बनवू शकतो? कृपया मला जलचक्राबद्दल सांगा."
    assert detect_language(nepali).code == "ne"
    assert detect_language(marathi).code == "mr"
