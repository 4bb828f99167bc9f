"""Conversation analysis by local rules: intent, ticket category, sentiment, urgency, a request
for a person and the language of one inbound message, with no model call.

Pure functions over the text (and, for urgency, the contact's earlier messages); about 20-40 µs
a message, deterministic, English, Russian, Spanish and Portuguese.

How it works: the text is case-folded, accents are dropped from Latin letters ("atención" meets
"atencion") and "ё" becomes "е"; words are split on Unicode word boundaries. Each word has a key
(its rough stem: English/Romance plurals, Russian endings) and matches lexicon words by that key or
by a prefix ("оператор*" matches "оператора", "операторе"). A lexicon rule is a phrase of word
slots ("talk/speak human/person") whose words may have up to three other words between them
("talk to a real person") inside one sentence. A negation ("not", "не", "no", "não") up to three
words before a rule, in the same clause, flips sentiment ("не доволен") and cancels intents and
requests for a person ("I don't need a human"), except after "can't" and the like ("не могу
дозвониться до оператора" still asks for one). The lexicons are ``_LEXICON`` below; operators add
ticket categories and phrases for "a person, please" through :class:`AnalysisConfig`.

Limits: rules, not understanding. Sarcasm, mixed messages and intents outside the list come out
as their loudest cue or "other"; ``confidence`` says how clear the cue was. Only the first
``MAX_CHARS`` characters are read.
"""

from __future__ import annotations

import dataclasses
import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "INTENTS",
    "LANGUAGES",
    "SENTIMENTS",
    "URGENCIES",
    "Analysis",
    "AnalysisConfig",
    "Analyzer",
]

# Ties between intent scores go to the earlier one: a legal request outranks anything else in
# the same message, a request to stop or cancel outranks chat.
INTENTS = (
    "data_erasure",
    "data_request",
    "unsubscribe",
    "request_human",
    "cancel",
    "billing",
    "order_status",
    "complaint",
    "question",
    "thanks",
    "goodbye",
    "greeting",
    "other",
)
SENTIMENTS = ("positive", "neutral", "negative")
URGENCIES = ("low", "normal", "high")
LANGUAGES = ("en", "ru", "es", "pt")
MAX_CHARS = 2000


@dataclass(frozen=True)
class Analysis:
    """What the rules make of one inbound message; the values are those of the tuples above."""

    intent: str
    category: str | None
    sentiment: str
    urgency: str
    wants_human: bool
    confidence: float
    language: str | None

    def __post_init__(self) -> None:
        if (
            self.intent not in INTENTS
            or self.sentiment not in SENTIMENTS
            or self.urgency not in URGENCIES
            or (self.language is not None and self.language not in LANGUAGES)
            or not 0.0 <= self.confidence <= 1.0
        ):
            raise ValueError(f"not a valid analysis: {self!r}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> Analysis:
        """Parse ``to_json`` output; ``ValueError`` on anything else (a stored row is checked)."""
        data = json.loads(s)
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or set(data) != names:
            raise ValueError(f"not an analysis: {s[:200]!r}")
        if not isinstance(data["wants_human"], bool) or not isinstance(
            data["confidence"], int | float
        ):
            raise ValueError(f"not an analysis: {s[:200]!r}")
        for name in ("intent", "sentiment", "urgency", "category", "language"):
            if not isinstance(data[name], str) and not (
                name in ("category", "language") and data[name] is None
            ):
                raise ValueError(f"not an analysis: {s[:200]!r}")
        return cls(**{**data, "confidence": float(data["confidence"])})


@dataclass(frozen=True)
class AnalysisConfig:
    """Operator additions to the built-in rules.

    - ``categories``: ticket category -> keywords; the category with most keywords in a message
      wins, ties go to the one listed first, no keyword gives ``None``.
    - ``human_phrases``: language -> extra phrases meaning "I want a person". All languages'
      phrases apply to every message, since a short message's language is a guess.

    A keyword or phrase is matched like the built-in lexicon: case- and accent-insensitive, by
    rough stem ("refund" meets "refunds", "счёт" meets "счета"), a trailing ``*`` matches any
    ending ("возврат*"), and its words may have up to three others between them.
    ``Analyzer`` raises ``ValueError`` naming the entry for one with no words in it.
    """

    categories: Mapping[str, Sequence[str]] = field(default_factory=dict)
    human_phrases: Mapping[str, Sequence[str]] = field(default_factory=dict)


_DEFAULT_CONFIG = AnalysisConfig()

# The lexicon: one rule a line, "LANG KIND[.LABEL] WEIGHT [FLAGS]: phrase | phrase".
# KIND: intent (label = intent), human (asks for a person; weight counts for request_human),
# sent (signed; label "anger" for profanity), urgent, deadline, wait (how long they have waited),
# calm. FLAGS: "short" (only in messages of at most 3 words, not after "the"/"your"...),
# "start" / "end" (only as the first / last words of a sentence), "keep" (a negation before it does not cancel it).
# In a phrase, "/" separates alternatives for one word and "*" matches any ending.
_LEXICON = """
en intent.greeting 1: hi | hello | hey | hiya | howdy | greetings | good morning/afternoon/evening
en intent.thanks 1.5: thank* | thx | ty | appreciate* | cheers | much obliged
en intent.goodbye 1.2: bye | goodbye | see you | take care | good night | have nice/good/great day/evening/weekend
en intent.question 0.8 start: what | how | why | when | where | which | who | whose | can/could/would/will/is/are/do/does/did/should
en intent.question 1: tell me | wondering | like know | how much | price* | cost*
en intent.order_status 2.5: where order/package/parcel/delivery/shipment/item/stuff | track* | status order/package/delivery/shipment | order/package/parcel/delivery status | when arrive/deliver*/ship* | hasn't/didn't/not arrive*/come/received | eta | waiting order/package/parcel/delivery
en intent.order_status 0.8: order* | package* | parcel* | deliver* | shipment* | shipping
en intent.cancel -2.5: already/previously cancel*
en intent.cancel 2.5: cancel* | call off | terminate subscription/contract/plan | end subscription/plan
en intent.billing 2.5: charged twice | double charged
en intent.billing 2: invoice* | bill | billing | billed | charge | charged | charges | overcharg* | chargeback | refund* | receipt* | payment* | pay | paid | transaction* | money back | vat
en intent.complaint 2: doesn't/dont/don't/didn't/isn't/not/won't/wont/never work* | broken | damaged | defective | crash* | bug | bugs | complain* | unacceptable | ridiculous | scam | wrong item/product | never arrived/came | nobody/noone answer*/respond*/repl* | no one answer*/respond*/repl* | still waiting | hacked | can't/cannot/couldn't log/sign/login/access | can't/cannot/couldn't reach/get through | rude | waste time | fed up | taking so/too long | arrived/came wrong/broken | is/are/was/been/went down | joke | outage
en intent.data_request 3: copy data/information | export* data | download* data | access data/information | what data/information have/hold/store/keep | data have about | subject access
en intent.data_request 1.5: personal data | gdpr
en intent.data_erasure 3.5: delet*/eras*/remov*/wipe/purge data/account/information/details/history/messages | forget me | right forgotten
en intent.unsubscribe 3: unsubscrib* | opt out | stop messages/emails/texts/newsletter*/notification*/spam | stop sending/texting messages/emails/texts/newsletter*/notification*/spam | no more messages/emails/texts | remove me list | don't/dont send/text/email me
en intent.unsubscribe 2: stop sending/texting/messaging/emailing
en intent.unsubscribe 3 short: stop
en human 3: talk/speak/chat/connect/transfer/get/want/need/put human/person/agent/operator/representative/rep/manager/supervisor/staff/charge | talk/speak/chat someone/somebody | real/live/actual human/person/agent | human being
en human 3: call me | call back | give me call | phone me | ring me back
en human 1.5 keep: reach/contact/through human/person/agent/operator
en human 3 short: human | person | agent | operator | representative | manager | supervisor
en sent 1.5: good | great | excellent | awesome | amazing | perfect | love* | happy | glad | helpful | nice | wonderful | fantastic | satisfied | pleased | brilliant | very/so/really kind | kind you | polite | friendly | resolved | fixed | works fine/great/perfectly
en sent 1: thank* | appreciate*
en sent 0: good morning/afternoon/evening/night
en sent -1.5: bad | poor | slow | wrong | broken | damaged | defective | hacked | doesn't/dont/don't/didn't/isn't/not/won't/never work* | nobody/noone answer*/respond*/repl* | still waiting | waste time | can't/cannot log/sign/login/access | charged twice | double charged
en sent -1: could better | problem*
en sent -2: terrible | awful | horrible | worst | hate* | angry | furious | annoy* | frustrat* | disappoint* | unacceptable | ridiculous | useless | scam | rude | disgust* | pathetic | sucks | upset | outrage* | nightmare | incompetent | fed up | joke
en sent -1.5: is/are/was/been/went down | outage
en sent.anger -2.5: fuck* | shit* | damn* | wtf | crap* | bullshit | stupid | idiot*
en urgent 2: urgent* | asap | immediately | right now | right away | emergency | critical
en urgent 1: now
en deadline 1: today | tonight | by tomorrow | end day | deadline
en wait 1: for hours/days/weeks | an hour | all day | third time | again again
en calm 1: no rush/hurry | whenever | when you can/have
ru intent.greeting 1: привет* | здравств* | здрасьте | добр* день/вечер/утр*/ночи | приветствую
ru intent.thanks 1.5: спасиб* | благодар* | мерси
ru intent.goodbye 1.2: до свидания | пока | всего добр*/хорош* | до встречи | до связи
ru intent.question 0.8 start: как* | что | почему | зачем | когда | где | куда | сколько | можно | можете | есть | ли
ru intent.question 1: подскаж* | скажите | хочу узнать | интересует | цен* | стоимост* | сколько стоит
ru intent.order_status 2.5: где заказ*/посылк*/доставк*/товар* | статус заказ*/доставк*/посылк* | трек* | отслеж* | когда придет/приедет/доставят/привезут | не пришел/пришла/пришло/доставили | жду заказ*/посылк*/доставк* | когда заказ*/посылк*/доставк*
ru intent.order_status 0.8: заказ* | посылк* | доставк* | курьер*
ru intent.cancel -2.5: уже отмен*
ru intent.cancel 2.5: отмен*
ru intent.cancel 2: отказ* от заказ*/подписк*
ru intent.billing 2: счет | оплат* | платеж* | заплат* | деньг* | денег | списа* | возврат* | чек | квитанц* | тариф* | бухгалтер*
ru intent.billing 2.5: дважды списа* | два раза списа*
ru intent.complaint 2: не работа* | сломал* | сломан* | зависа* | глюч* | жалоб* | пожалов* | возмутит* | безобраз* | обман* | не могу войти/зайти | не могу дозвон*/достуч* | долго отвеча*/жд* | не тот товар/заказ/размер | нагруб* | хам* | ответьте уже | никто не отвечает | сколько можно | беси* | взлом* | нет интернет*/связ*/сет* | пропал* | не груз*
ru intent.complaint 1.5: ошибк*
ru intent.data_request 3: копи* данн* | выгруз* данн* | какие данн* | доступ к данн* | что вы знаете обо мне
ru intent.data_request 1.5: мои данн* | персональн* данн*
ru intent.data_erasure 3.5: удал*/стер*/стир* данн*/аккаунт*/учетн*/профил*/переписк*/истори* | забудьте меня | право на забвение
ru intent.unsubscribe 3: отпиш* | отписат* | отписк* | не присылайте/пишите/отправляйте | больше не пиш*/присыл* | хватит писать/присылать | удалите из рассылк*
ru intent.unsubscribe 3 short: стоп
ru human 3: позов*/позвать/дайте/соедин*/переключ*/перевед*/свяж*/связат*/подключ*/хочу/нужен/нужна/нужно/поговор*/пообщат*/общат* оператор*/менеджер*/человек*/сотрудник*/консультант*/специалист*/администратор*/руководител*/начальник*/старш* | жив*/реальн* человек*/оператор*
ru human 3: перезвон* | позвоните/наберите мне
ru human 1.5 keep: дозвон*/достуч* оператор*/менеджер*/человек*/сотрудник*/поддержк*
ru human 3 short: оператор* | менеджер* | человек* | сотрудник* | консультант* | руководител*
ru sent 1.5: отличн* | хорош* | прекрасн* | замечательн* | супер | класс* | круто | доволен | довольн* | рад | рада | помогл* | помогли | нрав* | понрав* | люблю | вежлив* | молодц*
ru sent 1: спасиб* | благодар*
ru sent 0: добр* день/вечер/утр*/ночи
ru sent -1.5: плох* | медленн* | долго | сломан* | сломал* | не работа* | зависа* | глюч* | никто не отвечает | ответьте уже | сколько можно | не могу войти/зайти | взлом* | дважды списа* | два раза списа*
ru sent -1: могло лучше | проблем* | ошибк*
ru sent -2: ужасн* | отвратит* | кошмар* | недовол* | разочаров* | обман* | беси* | бесполезн* | возмутит* | безобраз* | хамств* | нагруб* | хуже | худш* | позор* | бред | отстой | нет интернет*/связ*/сет* | пропал* | не груз*
ru sent.anger -2.5: бля* | хрен* | пизд* | еба* | ебу* | сука | суки | дерьм* | говн* | херн* | нахер | нахуй | хуй* | заебал*
ru urgent 2: срочн* | немедленн* | прямо сейчас | как можно скорее | экстренн*
ru urgent 1: сейчас
ru deadline 1: сегодня | до завтра | к завтр* | дедлайн | до вечера | к вечеру
ru wait 1: уже час/неделю/месяц/день/сутки | несколько дней/часов | который раз | третий раз
ru calm 1: не тороп* | когда будет время
es intent.greeting 1: hola | buenos dias | buenas tardes/noches | buenas | buen dia | saludos
es intent.thanks 1.5: gracias | agradec*
es intent.goodbye 1.2: adios | hasta luego/pronto/manana | chao | chau | nos vemos
es intent.question 0.8 start: que | como | cuando | donde | cual* | quien* | por que | cuanto* | puedo | pueden | puede | hay | tienen | hacen
es intent.question 1: quisiera saber | dime | digame | precio* | cuesta | costo*
es intent.order_status 2.5: donde pedido*/paquete*/envio*/compra* | estado pedido*/envio*/compra*/paquete* | rastre* | seguimiento | cuando llega*/llegara* | no ha llegado | no llego | esperando pedido*/paquete*/envio*
es intent.order_status 0.8: pedido* | envio* | paquete* | entrega*
es intent.cancel -2.5: ya cancel*
es intent.cancel 2.5: cancel* | anular*
es intent.billing 2: factura* | cobr* | pago* | pagar | pague | reembols* | tarjeta | recibo* | cargo* | dinero
es intent.billing 2.5: cobraron/cobrado dos veces
es intent.complaint 2: no funciona* | no sirve | roto | rota | danad* | defectuos* | queja* | reclam* | inaceptable | estafa | bloquead* | hackea* | no puedo entrar/acceder | no consigo comunicarme/contactar | nadie responde/contesta | sigo esperando | grosero | tardan mucho/tanto | llego/vino equivocado/mal/roto/rota | broma | chiste | se cayo | caido | sin internet/servicio/senal
es intent.complaint 1.5: error*
es intent.data_request 3: copia datos | exportar datos | descargar datos | acceso datos | que datos
es intent.data_request 1.5: datos personales | mis datos
es intent.data_erasure 3.5: borr*/elimin*/suprim* datos/cuenta/informacion/historial | derecho olvido
es intent.unsubscribe 3: darme/dar/darse baja | no quier* recib* | dejar recibir | dejen enviar/escribir | no me envien/escriban | no mas mensajes
es intent.unsubscribe 3 short: baja
es human 3: habl*/comunic*/contact*/pasame/paseme/transfer*/quiero/necesito persona/humano*/agente*/operador*/asesor*/representante*/ejecutivo*/supervisor*/gerente*/encargad*/responsable* | persona/alguien real/verdad | ser humano
es human 3: me llame/llamen/llamaran | llamenme | llameme | llamarme
es human 1.5 keep: localizar/comunicarme/contactar persona/humano*/agente*/operador*
es human 3 short: operador | agente | humano | asesor | persona | supervisor
es sent 1.5: excelente | genial | perfect* | bien | buen* | encant* | feliz | content* | satisfech* | maravill* | increible | amable | util | gust*
es sent 1: gracias | agradec*
es sent 0: buenos dias | buenas tardes/noches | buen dia | buenas
es sent -1.5: equivocado | mal | malo | mala | lento | roto | rota | danad* | defectuos* | bloquead* | no funciona* | no sirve | nadie responde/contesta | sigo esperando | cobraron/cobrado dos veces
es sent -1: podria mejor | problema* | error*
es sent -2: pesim* | horrible | terrible | fatal | molest* | enojad* | enfadad* | decepcion* | harto | harta | inaceptable | estafa | verguenza | peor | asco | furios* | ridicul* | inutil | broma | chiste
es sent -1.5: se cayo | caido | sin internet/servicio/senal
es sent.anger -2.5: mierda | joder | puta* | carajo | cono | pendej* | cabron*
es urgent 2: urgent* | urgencia | inmediat* | ahora mismo | cuanto antes | antes posible | emergencia
es urgent 1: ahora
es urgent 1 end: ya
es deadline 1: hoy | para manana
es wait 1: hace horas/dias/semanas | llevo horas/dias/semanas/meses | tercera vez | otra vez
es calm 1: sin prisa | cuando pueda*
pt intent.greeting 1: ola | oi | oie | bom dia | boa tarde/noite | tudo bem | opa
pt intent.thanks 1.5: obrigad* | valeu | agradec*
pt intent.goodbye 1.2: tchau | ate logo/mais/breve/amanha | adeus | falou
pt intent.question 0.8 start: como | quando | onde | qual | quais | quem | por que | quanto* | posso | pode | podem | voces | tem | existe
pt intent.question 1: quero saber | gostaria saber | preco* | custa
pt intent.order_status 2.5: cade/onde pedido*/encomenda*/compra*/produto*/entrega* | status pedido*/entrega*/encomenda* | rastre* | quando chega* | nao chegou | esperando pedido*/pacote*/encomenda*/entrega*
pt intent.order_status 0.8: pedido* | encomenda* | entreg* | frete | pacote*
pt intent.cancel -2.5: ja cancel*
pt intent.cancel 2.5: cancel*
pt intent.billing 2: cobr* | fatura* | pagamento* | pagar | paguei | boleto* | reembols* | estorno | cartao | nota fiscal | dinheiro | recibo
pt intent.billing 2.5: cobrado/cobraram duas vezes
pt intent.complaint 2: nao funciona* | nao esta funcionando | quebrad* | defeito* | estragad* | reclam* | bloquead* | hackead* | invadid* | nao consigo entrar/acessar/logar | nao consigo falar/contato | ninguem responde | absurdo | golpe | continuo esperando | demora* muito/tanto | veio/chegou errado/quebrad*/danificad* | piada | caiu | fora ar | sem internet/sinal/servico
pt intent.data_request 3: copia dados | exportar dados | baixar dados | acesso dados | quais/que dados
pt intent.data_request 1.5: dados pessoais | meus dados | lgpd
pt intent.data_erasure 3.5: apag*/exclu*/delet*/remov* dados/conta/informac*/historico | direito esquecimento
pt intent.unsubscribe 3: descadastr* | sair lista | nao quero receber | parar receber | parem enviar/mandar | nao me mandem/enviem | chega mensagens
pt intent.unsubscribe 3 short: pare
pt human 3: falar/conversar/transfer*/transfira/passar/chamar/quero/preciso atendente*/humano*/pessoa/agente*/operador*/gerente*/supervisor*/consultor*/responsave* | falar/conversar alguem | pessoa verdade/real | atendimento humano | ser humano | atendente humano/real
pt human 3: me liga/ligue/liguem/ligar/ligam | ligar/liguem para mim
pt human 1.5 keep: contato/falar atendente*/humano*/pessoa
pt human 3 short: atendente* | humano | operador | agente | gerente
pt sent 1.5: otimo | excelente | perfeito | bom | boa | adorei | amei | gostei | feliz | satisfeit* | maravilh* | legal | show | educad* | gentil | resolveu | resolvido | parabens
pt sent 1: obrigad* | valeu
pt sent 0: bom dia | boa tarde/noite
pt sent -1.5: errado | danificad* | ruim | lento | quebrad* | defeito* | estragad* | bloquead* | nao funciona* | ninguem responde | cobrado/cobraram duas vezes
pt sent -1: poderia melhor | problema*
pt sent -2: pessim* | horrivel | terrivel | insatisfeit* | decepcion* | irritad* | chatead* | absurdo | golpe | vergonha | pior | lixo | raiva | inaceitavel | ridicul* | piada
pt sent -1.5: caiu | fora ar | sem internet/sinal/servico
pt sent.anger -2.5: merda | porra | caralho | droga | bosta
pt urgent 2: urgent* | imediat* | agora mesmo | quanto antes | mais rapido possivel | emergencia
pt urgent 1: agora
pt deadline 1: hoje | ate amanha
pt wait 1: ha horas/dias/semanas | faz horas/dias | terceira vez | de novo
pt calm 1: sem pressa | quando puder
"""

# Common words that tell the Latin-script languages apart (accents folded); Russian is told by
# its script. Words shared by two languages ("que", "de", "no") are left out on purpose.
_STOPWORDS = {
    "en": "the is are was i i'm you your my it it's this that to and of for with have has can "
    "what how why where when please not don't does want need would could just hi hello "
    "hey thanks thank bye order at on be will yes get an from about there",
    "es": "el la los las es y del en un una mi mis estoy quiero hola gracias pero muy al lo "
    "su puedo necesito tengo hace hacen se ya buenas buenos adios vale cual usted ustedes "
    "hasta todo bien tiene hay veces con",
    "pt": "o os e um uma em na nos do da dos das ao meu minha meus voce voces estou quero ola "
    "oi obrigado obrigada muito nao com sim tem tenho preciso isso esse essa pelo pela ja "
    "ate tchau valeu beleza cade foi faz seu sua qual quais vezes mais",
}
_NEGATORS = frozenset(
    "not no never don't dont doesn't doesnt didn't didnt isn't isnt aren't wasn't weren't won't "
    "wont can't cant cannot couldn't haven't hasn't without neither nor "
    "не нет ни никогда без nunca jamas jamais sin sem ni nem tampoco nao".split()
)
# "Can't" and "не могу" make a request stronger, not weaker: "I can't reach an operator".
_MODALS = frozenset(
    "can't cant cannot couldn't могу можем может можете получается удается puedo consigo "
    "consegui can could".split()
)
_INTENSIFIERS = frozenset(
    "very so really too extremely очень так слишком muy tan muito tao".split()
)
_DETERMINERS = frozenset(
    "the your this that his her ваш ваша этот тот su tu el ese este o seu esse".split()
)
_CLAUSE_WORDS = frozenset("but however но однако pero".split())
_SENTENCE_END = frozenset(".!?;¿¡\n")
_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*|[.!?;¿¡\n,:()]")
_EMPHATIC = re.compile(r"[!?]{3,}")
_LETTERS = re.compile(r"[^\W\d_]{2,}")
_REF = re.compile(r"#\s?(\w*\d\w*)|\b(\d{5,})\b")
_EMOJI = re.compile(
    r"([\U0001F600-\U0001F60D\U0001F642\U0001F44D\u2764\U0001F64F]|:-?\))"
    r"|[\U0001F620-\U0001F62D\U0001F92C\U0001F44E\u2639\U0001F641]|:-?\("
)
_UKRAINIAN = re.compile(r"[іїєґў]")
_RUSSIAN_ONLY = re.compile(r"[ыэъ]")
_MAX_GAP = 3
_NEG_WINDOW = 3
_SHORT_WORDS = 3
_HISTORY = 5
_MEMO_LIMIT = 4096
# Stems remembered per word. A bigger memo saves little (stemming a word is microseconds) and its
# churn, a new word for every order number, left megabytes of freed space in the allocator: the
# 100k soak ended 6 MiB lower at 4,096 than at 50,000 (bench/README.md, issue #9).
# Endings of 3, 2 and 1 letters, stripped longest first so "ами" goes before "и"; the same rough
# endings as the FAQ plugin's matcher. A stem keeps at least three letters.
_RU_ENDINGS = (
    frozenset(
        "ами ями ого его ому ему ыми ими ать ять ить еть уть ешь ете ите ала али ало ила или "
        "ило ает яет".split()
    ),
    frozenset(
        "ая яя ое ее ие ые ой ей ый ий ую юю ем им ым ом их ых ам ям ах ях ов ев ет ут ют ит "
        "ат ят ал ил".split()
    ),
    frozenset("а я о е ы и у ю ь й".split()),
)


def _fold_table() -> dict[int, str]:
    table = {ord("ё"): "е", ord("’"): "'", ord("`"): "'"}
    for code in range(0xC0, 0x250):
        base = unicodedata.normalize("NFD", chr(code))[0]
        if base.isascii() and base.isalpha():
            table[code] = base.lower()
    return table


_FOLD = _fold_table()


def _stem(word: str) -> str:
    """A rough stem: Russian endings for Cyrillic words, plural endings for Latin ones."""
    if "а" <= word[0] <= "я":
        for size, endings in zip((3, 2, 1), _RU_ENDINGS, strict=True):
            if len(word) - size >= 3 and word[-size:] in endings:
                return word[:-size]
        return word
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word[-1] == "s" and word[-2] not in "su'":
        return word[:-1]
    return word


@dataclass(frozen=True, slots=True)
class _Rule:
    kind: str
    label: str
    weight: float
    lang: str
    flags: frozenset[str]
    slots: tuple[frozenset[str], ...]


def _words(phrase: str) -> list[str]:
    return [t for t in _TOKEN.findall(phrase.casefold().translate(_FOLD)) if t[0].isalnum()]


def _slot(alternatives: str) -> frozenset[str]:
    keys = set()
    for alt in alternatives.split("/"):
        word = alt.casefold().translate(_FOLD)
        keys.add(word if word.endswith("*") else _stem(word))
    return frozenset(keys)


def _phrase(
    kind: str, label: str, weight: float, lang: str, flags: frozenset[str], text: str
) -> _Rule:
    """A rule from a phrase: words split on spaces, "/" between alternatives for one word; a
    part with no "/" may hold several words ("трек-номер"), "*" stays on the word it ends."""
    slots: list[frozenset[str]] = []
    for part in text.split():
        if "/" in part:
            slots.append(_slot(part))
            continue
        words = _words(part)
        slots.extend(_slot(w) for w in words[:-1])
        if words:
            slots.append(_slot(words[-1] + ("*" if part.endswith("*") else "")))
    if not slots:
        raise ValueError(f"{label or kind} phrase {text!r} has no words")
    return _Rule(kind, label, weight, lang, flags, tuple(slots))


_LINE = re.compile(r"^(\w\w) (\w+)(?:\.(\w+))? (-?[\d.]+)((?: \w+)*): (.+)$")


def _parse_lexicon(text: str) -> list[_Rule]:
    rules = []
    for line in text.strip().splitlines():
        m = _LINE.match(line)
        if m is None:
            raise ValueError(f"bad lexicon line: {line!r}")
        lang, kind, label, weight, flags, phrases = m.groups()
        for phrase in phrases.split(" | "):
            rules.append(
                _phrase(
                    kind, label or "", float(weight), lang, frozenset(flags.split()), phrase.strip()
                )
            )
    return rules


_BUILTIN = _parse_lexicon(_LEXICON)
_STOPWORD_LANG = {w: lang for lang, ws in _STOPWORDS.items() for w in ws.split()}


@dataclass(slots=True)
class _Match:
    rule: _Rule
    start: int
    end: int
    negated: bool


class Analyzer:
    """Rules compiled once from the built-in lexicon and an operator's :class:`AnalysisConfig`.

    Cheap to call from any task or thread: ``analyze`` keeps only a cache of word keys.
    """

    def __init__(self, config: AnalysisConfig = _DEFAULT_CONFIG) -> None:
        rules = list(_BUILTIN)
        for name, table in (
            ("categories", config.categories),
            ("human_phrases", config.human_phrases),
        ):
            for key, entries in table.items():
                # A lone string would be read letter by letter: "invoice" as seven keywords.
                if isinstance(entries, str) or not all(isinstance(e, str) for e in entries):
                    raise ValueError(f"{name}.{key} must be a list of strings, got {entries!r}")
        for category, keywords in config.categories.items():
            for keyword in keywords:
                rules.append(_phrase("category", category, 1.0, "", frozenset(), keyword))
        for lang, phrases in config.human_phrases.items():
            for phrase in phrases:
                rules.append(
                    _phrase(
                        "human", "", 3.0, lang if lang in LANGUAGES else "", frozenset(), phrase
                    )
                )
        self._categories = list(config.categories)
        self._index: dict[str, list[_Rule]] = {}
        prefixes: set[str] = set()
        for rule in rules:
            for key in rule.slots[0]:
                self._index.setdefault(key, []).append(rule)
            prefixes.update(k[:-1] for slot in rule.slots for k in slot if k.endswith("*"))
        self._prefixes = frozenset(prefixes)
        self._prefix_lengths = sorted({len(p) for p in prefixes})
        self._memo: dict[str, tuple[str, ...]] = {}

    def _keys(self, word: str) -> tuple[str, ...]:
        keys = self._memo.get(word)
        if keys is None:
            found = [_stem(word)]
            for n in self._prefix_lengths:
                if n > len(word):
                    break
                if word[:n] in self._prefixes:
                    found.append(word[:n] + "*")
            keys = tuple(found)
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            self._memo[word] = keys
        return keys

    def _match(self, words: list[str], sentence: list[int], clause: list[int]) -> list[_Match]:
        keys = [self._keys(w) for w in words]
        matches = []
        for i, token_keys in enumerate(keys):
            for key in token_keys:
                for rule in self._index.get(key, ()):
                    end = self._extend(rule, i, keys, sentence)
                    if end < 0:
                        continue
                    if "short" in rule.flags and (
                        len(words) > _SHORT_WORDS or (i > 0 and words[i - 1] in _DETERMINERS)
                    ):
                        continue
                    if "start" in rule.flags and i > 0 and sentence[i - 1] == sentence[i]:
                        continue
                    if (
                        "end" in rule.flags
                        and end + 1 < len(words)
                        and sentence[end + 1] == sentence[end]
                    ):
                        continue
                    negated = "keep" not in rule.flags and _negated(words, clause, i)
                    matches.append(_Match(rule, i, end, negated))
        return matches

    @staticmethod
    def _extend(rule: _Rule, i: int, keys: list[tuple[str, ...]], sentence: list[int]) -> int:
        """The last word of ``rule`` matched from word ``i``, or -1."""
        pos = i
        for slot in rule.slots[1:]:
            for j in range(pos + 1, min(pos + 2 + _MAX_GAP, len(keys))):
                if sentence[j] != sentence[i]:
                    return -1
                if not slot.isdisjoint(keys[j]):
                    pos = j
                    break
            else:
                return -1
        return pos

    def analyze(self, text: str, *, history: Sequence[str] = ()) -> Analysis:
        """Analyze one inbound message; ``history`` is the contact's earlier messages, oldest
        first (only the last few are read, to spot a question asked again)."""
        raw = text[:MAX_CHARS]
        folded = raw.casefold()
        words, sentence, clause = _tokenize(folded.translate(_FOLD))
        matches = self._match(words, sentence, clause)

        sent = _sentiment(matches, words)
        shouting = _shouting(raw, folded)
        for smiley in _EMOJI.findall(raw):
            sent += 1.0 if smiley else -1.0  # the group catches the happy ones
        if shouting and sent <= 0:
            sent -= 1.0  # shouting with nothing kind in it reads as anger
        repeats = _repeats(words, history)
        waited = any(m.rule.kind == "wait" for m in matches)
        if (repeats or waited) and sent <= 0:
            # Asking again, or saying how long they have waited, is frustration however polite.
            sent -= 1.0

        scores = dict.fromkeys(INTENTS, 0.0)
        best_rule: dict[str, float] = {}
        wants_human = False
        human_weight = 0.0
        urgent = deadline = 0.0
        calm = anger = False
        cats: dict[str, int] = {}
        for m in matches:
            kind, rule = m.rule.kind, m.rule
            if kind == "intent" and rule.weight < 0:
                scores[rule.label] += rule.weight  # a cue that rules the intent out
            elif kind == "intent" and not m.negated:
                # The strongest cue counts in full, further cues for the same intent a little.
                prev = best_rule.get(rule.label, 0.0)
                scores[rule.label] += max(rule.weight - prev, 0.0) + 0.3 * min(rule.weight, prev)
                best_rule[rule.label] = max(prev, rule.weight)
            elif kind == "human" and not m.negated:
                wants_human = True
                human_weight = max(human_weight, rule.weight)
            elif kind == "urgent":
                if m.negated:
                    calm = True  # "не срочно", "no rush"
                else:
                    urgent = max(urgent, rule.weight)
            elif kind == "deadline" and not m.negated:
                deadline = 1.0
            elif kind == "calm":
                calm = True
            elif kind == "sent" and rule.label == "anger":
                anger = True
            elif kind == "category":
                cats[rule.label] = cats.get(rule.label, 0) + 1
        scores["request_human"] += human_weight
        if "?" in raw or "¿" in raw:
            scores["question"] += 1.0
        if sent < 0:
            scores["complaint"] += 0.6 * -sent

        # INTENTS order breaks ties: max() keeps the first of equal scores.
        best = max(INTENTS, key=scores.__getitem__)
        top = scores[best]
        second = max(0.0, *(v for k, v in scores.items() if k != best))
        if top < 0.5:
            intent, confidence = "other", 0.3
        else:
            intent = best
            confidence = min(0.35 + 0.2 * top, 0.95) * top / (top + 0.5 * second)

        if intent == "complaint":
            sent = min(sent, -0.6)
        elif intent == "thanks":
            sent = max(sent, 0.6)
        sentiment = "positive" if sent >= 0.5 else "negative" if sent <= -0.5 else "neutral"

        pressure = urgent + deadline + waited + min(repeats, 2)
        if anger or (sentiment == "negative" and (shouting or repeats)):
            pressure += 1.0
        urgency = _urgency(pressure, calm, intent, sentiment, len(words))

        category = None
        if cats:
            category = max(
                self._categories, key=lambda c: (cats.get(c, 0), -self._categories.index(c))
            )
        return Analysis(
            intent=intent,
            category=category,
            sentiment=sentiment,
            urgency=urgency,
            wants_human=wants_human,
            confidence=round(confidence, 2),
            language=_language(folded, words, matches),
        )

    def suggest_replies(
        self, analysis: Analysis, text: str, *, language: str | None = None
    ) -> list[str]:
        """Two or three short replies a human agent may send as they are or edit.

        ``language`` (a contact's language code such as "pt-BR") wins when it is one of
        ``LANGUAGES``; then the analysis' language; then English.
        """
        lang = (language or "")[:2].lower()
        if lang not in LANGUAGES:
            lang = analysis.language or "en"
        own = list(_REPLIES[analysis.intent, lang])
        ref = _REF.search(text[:MAX_CHARS])
        if ref and analysis.intent in ("order_status", "cancel", "billing"):
            own[0] = _REPLIES["ref", lang][0].format(ref=ref.group(1) or ref.group(2))
        if analysis.sentiment == "negative" and analysis.intent not in (
            "complaint",
            "request_human",
        ):
            own[0] = f"{_REPLIES['sorry', lang][0]} {own[0]}"
        if analysis.wants_human and analysis.intent != "request_human":
            own.insert(0, _REPLIES["request_human", lang][0])
        return own[:3]


def _urgency(pressure: float, calm: bool, intent: str, sentiment: str, n_words: int) -> str:
    if pressure >= 2:
        return "high"
    if calm:
        return "low"
    if pressure == 0:
        if intent in ("greeting", "thanks", "goodbye"):
            return "low"
        # Chat that asks for nothing: praise, "ok", "vale".
        if intent == "other" and (
            sentiment == "positive" or (sentiment == "neutral" and n_words <= _SHORT_WORDS)
        ):
            return "low"
    return "normal"


def _tokenize(text: str) -> tuple[list[str], list[int], list[int]]:
    """Words, and for each the number of its sentence and of its clause."""
    words: list[str] = []
    sentence: list[int] = []
    clause: list[int] = []
    s = c = 0
    for tok in _TOKEN.findall(text):
        if not tok[0].isalnum():
            c += 1
            if tok in _SENTENCE_END:
                s += 1
            continue
        if tok in _CLAUSE_WORDS:
            c += 1
        words.append(tok)
        sentence.append(s)
        clause.append(c)
    return words, sentence, clause


def _shouting(raw: str, folded: str) -> bool:
    """Three "!" or "?" in a row, a word in capitals with a "!", or a message in capitals."""
    if _EMPHATIC.search(raw):
        return True
    if raw == folded:
        return False
    words = _LETTERS.findall(raw)
    caps = sum(1 for w in words if w.isupper())
    return caps > 0 and ("!" in raw or (caps >= 3 and caps * 2 > len(words)))


def _negated(words: list[str], clause: list[int], i: int) -> bool:
    for j in range(i - 1, max(i - 1 - _NEG_WINDOW, -1), -1):
        if clause[j] != clause[i]:
            return False
        if words[j] in _NEGATORS:
            after = words[j + 1] if j + 1 < len(words) else ""
            return words[j] not in _MODALS and after not in _MODALS
    return False


def _sentiment(matches: list[_Match], words: list[str]) -> float:
    """Signed sum of sentiment cues; a longer cue hides the shorter ones inside it."""
    covered: set[int] = set()
    total = 0.0
    for m in sorted((m for m in matches if m.rule.kind == "sent"), key=lambda m: m.start - m.end):
        span = range(m.start, m.end + 1)
        if covered.intersection(span):
            continue
        covered.update(span)
        w = m.rule.weight
        if m.start > 0 and words[m.start - 1] in _INTENSIFIERS:
            w *= 1.5
        if m.negated:
            # "not good" is bad; "not bad" is mildly good.
            w = -0.8 * w if w > 0 else -0.6 * w
        total += w
    return total


def _repeats(words: list[str], history: Sequence[str]) -> int:
    """How many of the recent messages (this one included) say again what an earlier one said."""
    if not history:
        return 0
    recent = [
        set(_tokenize(h[:MAX_CHARS].casefold().translate(_FOLD))[0]) for h in history[-_HISTORY:]
    ]
    recent.append(set(words))
    count = 0
    for i, later in enumerate(recent):
        if len(later) < 2:
            continue
        for earlier in recent[:i]:
            if len(later & earlier) >= 0.6 * len(later | earlier):
                count += 1
                break
    return count


def _language(folded: str, words: list[str], matches: list[_Match]) -> str | None:
    cyrillic = sum(1 for w in words if "а" <= w[0] <= "я")
    if cyrillic * 2 > len(words):
        if _UKRAINIAN.search(folded) and not _RUSSIAN_ONLY.search(folded):
            return None
        return "ru"
    votes = dict.fromkeys(LANGUAGES, 0.0)
    for w in words:
        lang = _STOPWORD_LANG.get(w)
        if lang is not None:
            votes[lang] += 1
    for m in matches:
        if m.rule.lang in votes and m.rule.kind != "category":
            votes[m.rule.lang] += 1
    if "ñ" in folded or "¿" in folded or "¡" in folded:
        votes["es"] += 2
    if "ã" in folded or "õ" in folded or "ç" in folded:
        votes["pt"] += 2
    votes["ru"] = 0
    ranked = sorted(votes.values(), reverse=True)
    if ranked[0] < 1 or ranked[0] == ranked[1]:
        return None
    return max(votes, key=lambda lang: votes[lang])


# Replies per intent and language, "INTENT LANG: reply | reply". "ref" (a reference number was
# given) and "sorry" (the message was negative) adjust the first reply.
_REPLY_TEXT = """
greeting en: Hello! How can I help you today? | Hi, thanks for getting in touch. What can I do for you?
greeting ru: Здравствуйте! Чем могу помочь? | Добрый день! Расскажите, пожалуйста, что у вас случилось.
greeting es: ¡Hola! ¿En qué puedo ayudarle? | Buenas, gracias por escribirnos. ¿Qué necesita?
greeting pt: Olá! Como posso ajudar? | Oi, obrigado pelo contato. Em que posso ajudar?
question en: Good question, let me check that for you. | Could you give me a bit more detail so I can answer precisely?
question ru: Хороший вопрос, сейчас уточню. | Уточните, пожалуйста, детали, чтобы ответить точно.
question es: Buena pregunta, déjeme comprobarlo. | ¿Podría darme un poco más de detalle para responderle con precisión?
question pt: Boa pergunta, vou verificar para você. | Pode me dar mais detalhes para eu responder com precisão?
complaint en: I'm sorry about this, I understand how frustrating it is. | Let me look into it right away. Could you tell me what happened?
complaint ru: Приносим извинения, понимаю, как это неприятно. | Сейчас разберусь. Расскажите, пожалуйста, что именно произошло?
complaint es: Lamento mucho lo ocurrido, entiendo su molestia. | Voy a revisarlo ahora mismo. ¿Me cuenta qué pasó exactamente?
complaint pt: Sinto muito pelo ocorrido, entendo o seu incômodo. | Vou verificar agora mesmo. Pode me contar o que aconteceu?
request_human en: Hi, I'm a member of the support team and I'll take it from here. | Thanks for waiting. How can I help?
request_human ru: Здравствуйте, это сотрудник поддержки, дальше с вами общаюсь я. | Спасибо за ожидание. Чем могу помочь?
request_human es: Hola, soy parte del equipo de soporte y le atiendo a partir de ahora. | Gracias por esperar. ¿En qué puedo ayudarle?
request_human pt: Olá, sou da equipe de atendimento e vou continuar com você a partir daqui. | Obrigado por aguardar. Como posso ajudar?
thanks en: You're welcome! Is there anything else I can help with? | Glad I could help. Have a great day!
thanks ru: Пожалуйста! Могу ещё чем-нибудь помочь? | Рады помочь. Хорошего дня!
thanks es: ¡De nada! ¿Hay algo más en lo que pueda ayudarle? | Me alegra haber ayudado. ¡Que tenga un buen día!
thanks pt: Por nada! Posso ajudar em mais alguma coisa? | Fico feliz em ajudar. Tenha um ótimo dia!
goodbye en: Goodbye, and thanks for contacting us! | Take care. Write to us any time.
goodbye ru: До свидания, спасибо за обращение! | Всего доброго, пишите, если что-то понадобится.
goodbye es: ¡Hasta luego, gracias por contactarnos! | Cuídese. Escríbanos cuando quiera.
goodbye pt: Até logo, obrigado pelo contato! | Tenha um bom dia. Fale com a gente quando precisar.
order_status en: Let me check the status of your order. | Could you send me your order number, please?
order_status ru: Сейчас проверю статус вашего заказа. | Подскажите, пожалуйста, номер заказа.
order_status es: Voy a consultar el estado de su pedido. | ¿Me puede indicar su número de pedido, por favor?
order_status pt: Vou verificar o status do seu pedido. | Pode me informar o número do pedido, por favor?
cancel en: I can help you cancel. Could you confirm the order or subscription? | Before I cancel, may I ask what went wrong?
cancel ru: Помогу с отменой. Подтвердите, пожалуйста, номер заказа или подписки. | Перед отменой подскажите, пожалуйста, что пошло не так?
cancel es: Puedo ayudarle a cancelar. ¿Me confirma el pedido o la suscripción? | Antes de cancelar, ¿puedo preguntarle qué salió mal?
cancel pt: Posso ajudar com o cancelamento. Pode confirmar o pedido ou a assinatura? | Antes de cancelar, pode me dizer o que deu errado?
billing en: Let me look at your billing details. | Could you send me the invoice number or the date of the payment?
billing ru: Сейчас посмотрю информацию об оплате. | Пришлите, пожалуйста, номер счёта или дату платежа.
billing es: Voy a revisar los datos de facturación. | ¿Me puede enviar el número de factura o la fecha del pago?
billing pt: Vou verificar as informações de cobrança. | Pode me enviar o número da fatura ou a data do pagamento?
data_request en: We'll prepare a copy of the personal data we hold about you. | To protect your data, we first need to confirm your identity.
data_request ru: Мы подготовим копию ваших персональных данных, которые у нас хранятся. | Чтобы защитить ваши данные, сначала нужно подтвердить вашу личность.
data_request es: Prepararemos una copia de los datos personales que tenemos sobre usted. | Para proteger sus datos, primero debemos verificar su identidad.
data_request pt: Vamos preparar uma cópia dos dados pessoais que temos sobre você. | Para proteger seus dados, primeiro precisamos confirmar sua identidade.
data_erasure en: We'll delete your personal data and confirm when it's done. | To protect your account, we first need to confirm your identity.
data_erasure ru: Мы удалим ваши персональные данные и сообщим, когда всё будет готово. | Чтобы защитить ваш аккаунт, сначала нужно подтвердить вашу личность.
data_erasure es: Eliminaremos sus datos personales y le confirmaremos cuando esté hecho. | Para proteger su cuenta, primero debemos verificar su identidad.
data_erasure pt: Vamos apagar seus dados pessoais e avisar quando estiver concluído. | Para proteger sua conta, primeiro precisamos confirmar sua identidade.
unsubscribe en: Done, you won't receive these messages any more. | Sorry for the bother. You've been unsubscribed.
unsubscribe ru: Готово, больше не будем присылать эти сообщения. | Извините за беспокойство, вы отписаны.
unsubscribe es: Listo, ya no recibirá más estos mensajes. | Disculpe las molestias, ya se dio de baja.
unsubscribe pt: Pronto, você não vai mais receber essas mensagens. | Desculpe o incômodo, sua inscrição foi cancelada.
other en: Thanks for your message. Could you tell me a bit more? | How can I help you with this?
other ru: Спасибо за сообщение. Расскажите, пожалуйста, подробнее? | Чем я могу помочь?
other es: Gracias por su mensaje. ¿Me puede contar un poco más? | ¿Cómo puedo ayudarle con esto?
other pt: Obrigado pela mensagem. Pode me contar um pouco mais? | Como posso ajudar com isso?
sorry en: I'm sorry for the trouble.
sorry ru: Извините за неудобства.
sorry es: Disculpe las molestias.
sorry pt: Desculpe o transtorno.
ref en: Let me look up {ref} for you.
ref ru: Сейчас проверю номер {ref}.
ref es: Voy a consultar el número {ref}.
ref pt: Vou consultar o número {ref}.
"""


def _parse_replies(text: str) -> dict[tuple[str, str], tuple[str, ...]]:
    replies = {}
    for line in text.strip().splitlines():
        head, body = line.split(": ", 1)
        intent, lang = head.split()
        replies[intent, lang] = tuple(r.strip() for r in body.split(" | "))
    return replies


_REPLIES = _parse_replies(_REPLY_TEXT)
