"""What kind of notice a mail is, before reading recipients: a bounce, an auto-reply, a feedback report.

`read_feedback` reads ARF reports (RFC 5965) and Apple's unsubscribe notices; `is_auto_reply` knows RFC
3834 auto-replies and the usual vacation markers; `looks_like_bounce` decides whether a mail that is not
an RFC 3464 report is worth reading as a human-written bounce (sender, subject and wording together,
never one of them alone, so that ordinary mail is not taken for a bounce); `is_delay_notice` knows a
warning that delivery is still being tried (never a hard bounce).
"""

from __future__ import annotations

import re

from bounce.mail import ADDR_RE, Finding, Mail
from bounce.message import parse_headers


def read_feedback(mail: Mail) -> tuple[str, list[Finding]] | None:
    report = None
    for part in mail.parts:
        if part.ctype == "message/feedback-report":
            report = part
            break
    if report is None:
        if mail.header("x-apple-unsubscribe").lower() == "true" and "@" in mail.from_addr:
            return "opt-out", [Finding(mail.from_addr, reason="feedback", feedback_type="opt-out")]
        return None
    fields = parse_headers(report.text().strip("\n"))
    first = dict(reversed(fields))
    # Several Original-Rcpt-To fields: one per complaining recipient.
    rcpts = [a.lower() for k, v in fields if k == "original-rcpt-to" for a in ADDR_RE.findall(v)]
    if not rcpts:
        rcpts = [a.lower() for a in ADDR_RE.findall(first.get("removal-recipient", ""))]
    if not rcpts and mail.original is not None:
        rcpts = [a.lower() for a in ADDR_RE.findall(mail.original.get("to"))][:1]
    ftype = first.get("feedback-type", "").strip().lower() or "abuse"
    return ftype, [Finding(a, reason="feedback", feedback_type=ftype) for a in dict.fromkeys(rcpts)]


_AUTO_SUBJECT = re.compile(
    r"^(?:auto(?:matic)?[ -]?(?:reply|response|antwort|respuesta)|out of (?:the )?office|"
    r"autoreply|auto:|abwesenheit|r[ée]ponse automatique|absence|vacation|away from|"
    r"自動応答|自動返信|不在)",
    re.I,
)


def is_auto_reply(mail: Mail) -> bool:
    if mail.from_local in ("mailer-daemon", "postmaster", "mail-daemon"):
        return False
    auto = mail.header("auto-submitted").lower()
    if auto.startswith("auto-replied"):
        return True
    if mail.header("x-autoreply") or mail.header("x-autorespond") or mail.header("x-autoresponder"):
        return True
    if mail.header("precedence").lower() == "auto_reply":
        return True
    if mail.header("x-apple-action").upper() == "VACATION":
        return True
    return bool(_AUTO_SUBJECT.match(mail.subject.strip()))


# Senders MTAs write bounces as (RFC 5321 §4.5.5: the envelope sender is null; the From is the daemon).
_DAEMON = re.compile(r"^(?:mailer[-_.]?daemon|post_?master|mail-?daemon|mailer|mdaemon|majordomo|"
                     r"mail\.?delivery(?:\.?system|\.?subsystem)?)$", re.I)
# Senders some notifiers use that ordinary mail uses too: they need the subject and the wording as well.
_WEAK_SENDER = re.compile(r"^(?:no-?reply|bounces?|returned|administrator|system ?administrator|root|"
                          r"mail(?:er)?|daemon)$", re.I)
# Names that say a sender is a mail system, not a person, whatever the local part looks like
# ("E500_SMTP_Mail_Service", "Symantec_AntiVirus_for_SMTP_Gateways", "Mail Delivery Subsystem" as
# the display name of a plain address): a notifier's sender, never a daemon on its own.
_SYSTEM_NAME = re.compile(
    r"(?:^|[\W_])(?:smtp|e?smtpd?|mta|mailer|daemon|postmaster|mail[ _.-]?(?:delivery|service|system|server|"
    r"gateway|administrator|admin)|delivery[ _.-]?(?:system|subsystem|notification|service)|"
    r"anti-?virus|anti-?spam|virus ?wall|system administrator|"
    # Mail gateways and filters that write notices in their own name.
    r"mail ?(?:marshal|scanner|sweeper|guard)|interscan|ironport|barracuda|mimecast|messagelabs|postini|"
    r"scanmail)(?:$|[\W_\d])", re.I)
_REPLY_OR_FORWARD = re.compile(r"^\s*(?:re|fwd?|aw|wg|tr|rv|sv|vs)\s*(?:\[\d+\])?\s*:", re.I)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|delivery (?:status|failure|failed|notification|problem|report|delay)|"
    r"returned mail|mail delivery|failure notice|delivery has failed|could not be delivered|"
    r"non remis|unzustellbar|nicht zustellbar|mail system error|message not delivered|"
    r"rejected|bounce|warning: message|delayed mail|returned to sender|not delivered|"
    r"non recapitabile|no entregado|niet bezorgd|error|failure|failed|エラー|不達|配信不能|未達|退信|失败|"
    r"niedostarcz|nie dostarcz|nicht zugestellt|zustellung fehlgeschlagen|non consegn|no se pudo entregar|"
    r"n[ãa]o (?:foi )?entregue|onbestelbaar|olevererbar|ikke levert|kan ikke leveres",
    re.I,
)


_BOUNCE_TEXT = re.compile(
    r"could ?n[o']t be delivered|undeliverable|delivery (?:has )?failed|failed permanently|"
    r"(?:wasn'?t|was not|were not|unable|not) (?:able to )?deliver|permanent (?:fatal )?error|"
    r"returned to (?:the )?sender|transcript of session|following address(?:es)? failed|"
    r"delivery status notification|did not reach|not (?:yet )?(?:be |been )?delivered|error (?:sending|delivering)|"
    r"delivery (?:to the following|problem|failure)|message (?:was )?(?:rejected|bounced)|"
    r"invalid (?:user|recipient) address|error message below|no such (?:user|recipient|mailbox)|"
    r"(?:user|recipient|mailbox) unknown|unknown (?:user|recipient)",
    re.I,
)


NOT_A_BOUNCE, STRUCTURE_NEEDED, BOUNCE_LIKE = 0, 1, 2


def bounce_signs(mail: Mail) -> int:
    """How much a mail that is not an RFC 3464 report looks like a bounce:

    BOUNCE_LIKE: failed recipients named in a header, or a daemon sender (or a null Return-Path) with a
    bounce's subject or wording, or a notifier's sender (no-reply …) with both: any reader may read it.
    STRUCTURE_NEEDED: a person's mail with a bounce's subject and wording (a forwarded bounce, or a
    question about one): only a family's own structure (its introduction sentence, sendmail's blocks)
    makes it a bounce, never the general reader.
    NOT_A_BOUNCE: anything else, and mail with the non-null Return-Path of someone who is not a daemon
    (an MTA sends bounces with a null envelope sender, RFC 5321 §4.5.5)."""
    if mail.root.ctype == "multipart/report" and "delivery-status" in mail.root.params.get(
            "report-type", "").lower():
        return BOUNCE_LIKE
    if mail.failed:
        return BOUNCE_LIKE
    return_path = mail.header("return-path").strip()
    rp_addr = ADDR_RE.search(return_path)
    daemon = bool(_DAEMON.match(mail.from_local)) or return_path == "<>" or (
        rp_addr is not None and bool(_DAEMON.match(rp_addr.group(0).split("@", 1)[0])))
    if not daemon and rp_addr is not None:
        return NOT_A_BOUNCE
    subject_like = bool(_BOUNCE_SUBJECT.search(mail.subject))
    text_like = bool(_BOUNCE_TEXT.search(mail.text[:4000]))
    if daemon:
        return BOUNCE_LIKE if subject_like or text_like else NOT_A_BOUNCE
    if not (subject_like and text_like):
        return NOT_A_BOUNCE
    person = "@" in mail.from_addr and not _WEAK_SENDER.match(mail.from_local) and not system_sender(mail)
    return STRUCTURE_NEEDED if person or _REPLY_OR_FORWARD.match(mail.subject) else BOUNCE_LIKE


def system_sender(mail: Mail) -> bool:
    """The sender's local part or display name names a mail system (see _SYSTEM_NAME)."""
    if _SYSTEM_NAME.search(mail.from_local):
        return True
    value = mail.header("from")
    name = value[: value.find("<")] if "<" in value else value[value.find("(") + 1:] if "(" in value else ""
    return bool(name.strip()) and bool(_SYSTEM_NAME.search(name[:200]))


def looks_like_bounce(mail: Mail) -> bool:
    return bounce_signs(mail) == BOUNCE_LIKE


# Subjects and sentences of "still trying" warnings (sendmail, Postfix, Exim, Exchange, Gmail, Windows).
_DELAY_SUBJECT = re.compile(
    r"^(?:warning:|delayed mail|delivery (?:status notification )?\(?delay|delivery delayed|"
    r"message delayed|\[?postmaster\]? warning|mail delivery (?:warning|delayed))|\(delay\)|"
    r"still being retried|delivery delayed|not yet been delivered|warning: message",
    re.I,
)
# Literal phrases (searched in the lower-cased notice, no regex: this runs on every bounce).
_DELAY_TEXT = ("this is a warning message only", "this is a warning only", "you do not need to resend",
               "will be retried", "will retry", "will continue to try", "will keep trying", "will try again",
               "still trying", "continue trying", "continue to try", "delivery attempts will continue",
               "has not yet been delivered", "has been delayed", "not been delivered yet",
               "not yet been delivered", "transient non-fatal", "this is just a warning",
               "has been postponed")
_FINAL_TEXT = ("permanent error", "permanent fatal", "permanently failed", "failed permanently",
               "permanent failure", "giving up", "given up", "not going to try again",
               "has been returned", "has been bounced")


def is_delay_notice(mail: Mail) -> bool:
    """A warning that delivery is still being tried: the subject or the notice says so, and the
    notice does not also say that it gave up."""
    head = mail.text[:6000].lower()
    if any(phrase in head for phrase in _FINAL_TEXT):
        return False
    return bool(_DELAY_SUBJECT.search(mail.subject)) or any(phrase in head for phrase in _DELAY_TEXT)
