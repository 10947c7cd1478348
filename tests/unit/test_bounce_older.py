"""Older bounce formats, each on a synthetic notice written from the format's known structure.

qmail and its variants (vpopmail, other introductions, a three-language one), Exchange 5.5 to 2007,
GroupWise and NTMail, Yahoo old and new, SMTP32/IMail, Sina (GB2312, with and without English), sendmail
with and without MIME and with a site's own introduction, Lotus Notes and Domino, Microsoft SMTPSVC,
Postfix 1.x and renamed copies of it, Netscape Messaging Server, Smail, MDaemon, LSMTP, InterScan,
university and ISP notices (recipient in a sentence, "Intended recipient:", "Failed Recipient:" …) and the
"still trying" warnings of several of them; and formats Sisimai reads with modules of their own
(Active!hunter, InterScan MSS, Google Workspace, Mimecast, Smail 3 and Deutsche Telekom's copy of it).
Addresses are example.* ones; no sample is a copy of a collected bounce.

What is checked is what these formats can tell: that the notice is a bounce, which recipients failed,
and that a warning is a delay that is never hard.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bounce.dsn import parse

OLDER = Path(__file__).parent / "bounce_samples" / "older"

# sample: (failed recipients in report order, delay warning?)
EXPECTED: dict[str, tuple[list[str], bool]] = {
    "activehunter": (["yamada@ah.example.jp"], False),
    "aol_sendmail": (["screenname@aol.example.com"], False),
    "courier_transcript": (["gone@example.org"], False),
    "dadoservice": (["ketchuy@dado.example.it"], False),
    "demon_addressed_to": (["james@jeb.demon.example.uk"], False),
    "domino_because": (["rshaw@domino.example.com"], False),
    "dsn_angle_final": (["artreg@home.example.dk"], False),
    "dsn_delayed": (["later@example.org"], True),
    "earthlink": (["rlo@earth.example.net"], False),
    "email_server_at": (["reil@lar.ieo.example.it"], False),
    "exchange2000_error_type": (["info@example.biz"], False),
    "exchange2000_plain": (["gone@mail.example.net"], False),
    "exchange2003_could_not_be_reached": (["sales@example.net"], False),
    "exchange2003_display_name": (["bsmith@corp.example.com"], False),
    "exchange2007_html": (["old.name@ex.example.com"], False),
    "exchange55_ims": (["jpublic@org.example.com"], False),
    "exchange55_x400": (["jroe@corp.example.com"], False),
    "exchange_advisory_delay": (["waiting@example.org"], True),
    "exim_old_rcpt": (["rob@anal.example.uk"], False),
    "exim_rcpt_error": (["smith@example.co.uk"], False),
    "eyou": (["mahau@cnb.example.com"], False),
    "failed_recipient_field": (["garyt@example.com"], False),
    "failed_recipients_block": (["duke@ald.example.com"], False),
    "googleworkspace": (["nobody@ws.example.org"], False),
    "groupwise_attached": (["nowak@gw.example.org"], False),
    "groupwise_full_addr": (["tkramer@gw.example.edu"], False),
    "hotpop": (["smithee@hotpop.example.com"], False),
    "imail_userid": (["gone@imail.example.com"], False),
    "interscan_mss": (["suzuki@imss.example.co.jp"], False),
    "interscan_nt": (["isam@kv.example.be"], False),
    "interscan_viruswall": (["kim@s1.example.com"], False),
    "kundenserver": (["severin@t-online.example.de"], False),
    "list_of_failed": (["akh@sdm.example.de"], False),
    "lsmtp": (["carlos@lsmtp.example.com"], False),
    "machine_generated": (["zzzzz@newmail.example.ru"], False),
    "mailmarshal_affected": (["absent@mm.example.com"], False),
    "mdaemon": (["bsss@turbo.example.com"], False),
    "mdaemon_pro": (["kulp@webmail.pla.example.net.py"], False),
    "message_could_not_be_delivered_to": (["dyc@ademe.example.fr"], False),
    "mimecast_notice": (["hoshi@mc.example.com"], False),
    "mxlogic": (["hmu@extra.example.com"], False),
    "netscape": (["alpha@nms.example.com", "beta@nms.example.com"], False),
    "netscape41": (["gamma@verio.example.net"], False),
    "not_delivered_following": (["ucuser@example.edu"], False),
    "notes_document": (["jdoe@notes.example.com"], False),
    "notes_failure_report": (["jsmith@notes.example.co.uk"], False),
    "ntmail": (["mike@ntmail.example.com"], False),
    "postfix_failure_reason": (["bj@detect.example.net"], False),
    "postfix_old": (["seanie@example.ie"], False),
    "postfix_renamed": (["dlowe@mail1.example.com"], False),
    "postfix_two_recipients": (["one@example.org", "two@example.org"], False),
    "prodigy_full": (["acin@prodigy.example.net"], False),
    "qmail_delay": (["slow@example.org"], True),
    "qmail_mta_intro": (["b.meyer@example.de"], False),
    "qmail_sorry_intro": (["coach@example.com.au"], False),
    "qmail_trilingual": (["pedro@example.es"], False),
    "qmail_two_recipients": (["novak@example.cz", "svoboda@example.cz"], False),
    "qmail_vpopmail": (["anna@example.org"], False),
    "sendmail88_transcript": (["prof@example.edu"], False),
    "sendmail_comma_list": (["pat@nowhere.example", "lee@nowhere.example"], False),
    "sendmail_custom_intro": (["trotter@lab.example.gov"], False),
    "sendmail_lab_list": (["trotts@lab.example.gov"], False),
    "sendmail_nomime": (["kees@example.nl"], False),
    "sendmail_transcript_only": (["mshaw@example.gov"], False),
    "sendmail_warning": (["later@example.org"], True),
    "sina": (["wang.li@sina.example", "zhao.min@sina.example"], False),
    "sina_cn": (["chen.hua@sina.example"], False),
    "sina_english": (["li.ming@sina.example.cn"], False),
    "smail": (["jkl@smail.example.org"], False),
    "smail_failed": (["kurz@nowhere.example.org"], False),
    "smtp32_attempts": (["lists@mail.example.com"], False),
    "smtp32_full": (["oliver@mail.example.ph"], False),
    "smtp32_two": (["one_bad_address@example.net", "after_another@example.net"], False),
    "smtp32_undeliverable_to": (["ghost@example.com"], False),
    "smtpsvc_old_message": (["midge@iis.example.com"], False),
    "smtpsvc_transcript": (["ddavis@win.example.com"], False),
    "smtpsvc_unreachable": (["fred@unreachable.example.org"], False),
    "socgen_sentence": (["duke.k@socg.example.com"], False),
    "telekom_smail": (["mueller@t-online.example.de"], False),
    "usanet": (["chris.gm@usa.example.net"], False),
    "warn_exim": (["slow@example.org"], True),
    "warn_googlemail": (["laggard@example.com"], True),
    "warn_messageswitch": (["nobody.home@switch.example.com"], True),
    "warn_not_yet": (["waiting@pop3.example.net"], True),
    "warn_postfix": (["later@example.org"], True),
    "warn_sendmail": (["busy@example.edu"], True),
    "warn_symantec": (["slowpoke@av.example.com"], True),
    "warn_windows": (["waiting@example.org"], True),
    "x400_gateway": (["h.meier@x400.example.net"], False),
    "yahoo_multi": (["first.one@yahoo.example.com", "second.one@yahoo.example.com"], False),
    "yahoo_new": (["lost.user@yahoo.example.com"], False),
    "yahoo_relay_sbc": (["kimber@example.net"], False),
    "yahoo_remote_host": (["closed@yahoo.example.com"], False),
    "yale_localpart": (["tdank@mail.example.edu"], False),
}


def test_every_sample_has_an_expectation() -> None:
    assert {p.stem for p in OLDER.glob("*.eml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_older_format(name: str) -> None:
    recipients, delay = EXPECTED[name]
    report = parse((OLDER / f"{name}.eml").read_bytes())
    assert report.is_bounce
    assert [r.address for r in report.recipients] == recipients
    for r in report.recipients:
        assert r.status, "every recipient gets a status, if only a reason-only one"
        if delay:
            assert r.action == "delayed" and not r.hard and r.status.startswith("4")
        else:
            assert r.action == "failed" or r.status.startswith("4")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_crlf_reads_the_same(name: str) -> None:
    raw = (OLDER / f"{name}.eml").read_bytes()
    assert parse(raw.replace(b"\n", b"\r\n")).to_dict() == parse(raw).to_dict()
