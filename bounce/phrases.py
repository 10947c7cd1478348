"""What remote hosts say, per reason: the phrase table and the matcher that runs it fast.

Phrases are regular expressions on normalized text (lower case, one space, addresses written "x@x",
links reduced to their host name), written from the wording MTAs and providers use in their replies
and from their published reply-code pages. They name what a reply means (a full mailbox, an unknown
user, a blocklist …), never one sample's sentence.

Speed: a phrase that contains a literal "anchor" (three characters or more that every match contains)
only runs when one pass over the text (`Doc`) has seen its anchor; the others run together as one regex.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MAX_TEXT = 4000

# What remote hosts say, per reason, as regular expressions on lower-cased text in which addresses are
# "x@x" and links are reduced to their host name. Written from the wording of real MTAs and providers.
PHRASES: dict[str, tuple[str, ...]] = {
    "mailboxfull": (
        r"boite du destinataire pleine", r"would exceed (?:the )?(?:maximum )?(?:allowed )?(?:storage|quota)",
        r"(?:mailbox|inbox)\b[^.]{0,40}\bis (?:full|over quota)",
        r"out of storage space",
        r"(?:account|user|recipient|mailbox|inbox) (?:is |has )?(?:temporarily )?"
        r"(?:over|exceed(?:ed|ing|s)?) (?:the |its |their )?"
        r"(?:disk |storage |mailbox |allowed )?(?:quota|space|storage)",
        r"(?:disk|disc|storage|mail|mailbox) quota",
        r"not enough (?:storage |disk )?space", r"(?:does not|doesn'?t) have enough space", r"space has been used up",
        r"storage (?:allocation|space) (?:exceeded|used up|full)",
        r"too many messages (?:on the server|in (?:the |this )?mailbox)",
        r"reached (?:its |the |their )?(?:disk |storage |mailbox )?(?:quota|capacity)",
        r"mail ?box (?:is )?(?:full|over ?quota|exceeded|size limit exceeded)", r"quota (?:exceeded|full)",
        r"over ?quota", r"exceeded (?:the |his |her |their )?(?:storage|quota|mailbox)", r"disk quota",
        r"(?:mailbox|mail box|inbox|mailfolder|account|user) (?:is )?(?:full|over)", r"box (?:is )?full",
        r"full mail ?box", r"exceed(?:s|ed)? (?:the )?(?:mailbox |storage )?quota",
        r"would exceed (?:the |their )?(?:mailbox )?quota", r"too much mail data",
        r"user has exhausted allowed storage space", r"maildir (?:has )?over", r"quota violation",
        r"space (?:is )?not enough", r"mailbox (?:has )?exceeded", r"holding more than",
        r"mailbox exceeds (?:its |the )?(?:allowed |maximum )?(?:size|storage|quota)",
    ),
    "mesgtoobig": (
        r"(?:mail|message|e-?mail) size limit (?:exceeded|reached)",
        r"message (?:is )?too (?:big|large)", r"message size exceeds",
        r"exceeds? (?:the )?(?:maximum |max )?(?:message |mail )?size",
        r"size (?:of (?:the )?message )?(?:is )?(?:too large|exceeds)",
        r"message (?:length|size) (?:is )?(?:too|exceeds|over)", r"mail too large",
        r"maximum (?:allowed )?message size", r"message file too big", r"larger than (?:the )?(?:maximum|max)",
        r"too big for (?:the )?system",
    ),
    "exceedlimit": (
        r"message length exceeds administrative limit",
        r"exceeds? (?:the )?(?:recipient'?s? )?(?:administrative|per-mailbox) limit",
        r"message too large for this recipient",
    ),
    "suspend": (
        r"(?:is currently|has been) suspended", r"temporar(?:y|ily) (?:locked|inactive)",
        r"(?:user|domain) (?:or domain )?is disabled",
        r"inactive (?:account|user|mailbox)", r"(?:user|account) (?:is )?terminated", r"archived (?:recipient|mailbox)",
        r"no longer accepts (?:e-?)?mail",
        r"(?:mailbox|account|user|recipient) (?:is )?currently (?:suspended|disabled|inactive)",
        r"mailbox (?:is )?(?:disabled|frozen)",
        r"(?:account|mailbox|address|user|recipient)(?: account)? (?:has been |is |was )?(?:temporarily )?"
        r"(?:disabled|suspended|deactivated|locked|frozen|on hold|expired|discontinued)",
        r"(?:disabled|suspended|inactive|deactivated|locked) (?:account|mailbox|user)",
        r"boite du destinataire (?:archivee|fermee)", r"account (?:is )?(?:not active|inactive)",
        r"this (?:account|mailbox) (?:has been|is) (?:disabled|blocked|suspended)", r"recipient suspended",
        r"is a deactivated mailbox", r"user (?:account )?is unavailable", r"not an active (?:account|address)",
        r"the email account that you tried to reach is disabled", r"tried to reach is (?:inactive|disabled)",
        r"delivery to this mailbox has been (?:suspended|disabled)", r"account is locked",
        r"(?:user|account|mailbox) (?:\S+ )?(?:is )?temporar(?:y|ily) (?:locked|disabled|suspended)",
    ),
    "hasmoved": (
        r"(?:user|mailbox|address|recipient) has moved", r"has been moved",
        r"no longer (?:at|with|available at) this", r"address has changed", r"moved (?:to|permanently)",
        r"user not local; please try",  # RFC 5321's 551 reply: the mailbox is elsewhere now
    ),
    "norelaying": (
        r"relay(?:ing)? (?:access )?(?:denied|prohibited|not (?:allowed|permitted|authori[sz]ed))",
        r"not (?:allowed|permitted|authori[sz]ed) to relay", r"unable to relay", r"we do not relay",
        r"no relaying", r"relay not permitted", r"relaying (?:mail )?(?:to .{0,80} )?(?:is )?(?:denied|refused)",
        r"not a gateway", r"cannot relay", r"can'?t relay", r"relay access",
        r"(?:domain|host) isn'?t in my list of allowed rcpthosts", r"not configured to relay",
        r"email address is not verified",
    ),
    "authfailure": (
        r"sender is unauthenticated", r"requires? all senders to authenticate",
        r"spf (?:check |validation |verification )?(?:failed|failure|fail|softfail|error)",
        r"(?:bad|invalid|failed|broken) spf", r"spf[:=] ?(?:fail|softfail|permerror)",
        r"sender policy framework", r"\bdkim\b.{0,40}(?:fail|invalid|bad|missing|required)",
        r"(?:fail|invalid|bad|missing|no)\w* \bdkim\b", r"\bdmarc\b", r"domainkeys",
        r"does not designate .{0,80} as permitted sender", r"unauthenticated (?:e-?mail|message)",
        r"authentication (?:check|checks|results?) (?:failed|fail)", r"sender (?:is )?not authenticated",
        r"fails? to pass authentication", r"does not have authentication information",
        r"required authentication level",
    ),
    "userunknown": (
        r"not present in (?:the )?directory", r"mailbox not present", r"can'?t accept user",
        r"destination addresses? (?:were|was|is) unknown", r"destination server rejected recipients",
        r"\binvalid address\b", r"mailbox is inactive", r"user not active", r"no mail ?box available",
        r"no valid recipients", r"not a local address",
        r"envelope recipient (?:has been denied|is in my badrcptto)", r"email name is not found",
        r"badrecipientto", r"validrcptto", r"unknown virtual user", r"adresse nicht gefunden", r"x@x>? not found",
        r"no \S+ in name directory", r"non-?existent user", r"x@x[>)]? does ?n[o']t exist",
        r"(?:recipient|user) \S+ was not found", r"user \(\S+\) unknown",
        r"recipient (?:address )?rejected: (?:user ?unknown|invalid[- ](?:user|recipient))",
        r"(?:user|recipient|mailbox|account|addressee|local part)s? (?:is )?"
        r"(?:unknown|not (?:found|known|exist|valid|listed|recognized|recognised|local|present)"
        r"|does ?n[o']t exist|doesn'?t exist|non-?existent|invalid|unavailable|not found)",
        r"unknown (?:user|recipient|mailbox|local[- ]?part|address|e-?mail address|account|alias)",
        r"no such (?:user|recipient|mailbox|address|account|person|local user|addressee)",
        r"(?:invalid|bad|illegal) (?:recipient|mailbox|user|destination address)",
        r"(?:user|mailbox|recipient|account|address) (?:\S+ )?(?:does ?n[o']t|doesn'?t) exist",
        r"not a valid (?:user|mailbox|recipient)", r"is not (?:a )?(?:valid|known) (?:user|mailbox|recipient)",
        r"no mailbox (?:here|found|by that name)",
        r"recipient (?:address )?rejected: (?:user unknown|unknown|invalid (?:user|recipient)|undeliverable)",
        r"unknown or illegal (?:user|alias)", r"user (?:does|did) not exist", r"no such address",
        r"mailbox unavailable", r"mailbox not (?:found|available)", r"not (?:our|a) customer",
        r"invalid final delivery userid", r"account (?:does not exist|not found|unavailable)",
        r"address (?:does not exist|unknown|not found|invalid)", r"no account by that name",
        r"is not an active address", r"there is no one at this address", r"no longer (?:valid|exists?)",
        r"not (?:listed|found) in (?:the )?(?:address book|directory|domino directory|name directory)",
        r"email account that you tried to reach does not exist", r"(?:user|mailbox) lookup failed",
        r"badrcptto", r"recipient not (?:found|ok|exist)", r"unknown local user", r"user missing",
        r"(?:this )?user doesn'?t have an? \S+ account", r"undeliverable address",
        r"recipient (?:address )?(?:not found|unknown|does not exist|invalid)", r"utilisateur inconnu",
        r"destinataire inconnu", r"no existe", r"unbekannte?r? (?:empf|benutzer)", r"nessun utente",
        r"adresse (?:d au moins un destinataire )?invalide", r"mailbox (?:name )?(?:not allowed|invalid)",
        r"address (?:could ?n[o']t|cannot) be found", r"not (?:a )?(?:known|valid) (?:e-?mail )?address",
        r"recipient address rejected: access denied", r"resolver\.adr\.recipient ?not ?found",
        r"recipient not found by smtp address lookup",
    ),
    "filtered": (
        r"only accept(?:s|ing) (?:mail|messages|e-?mail) from (?:specific|selected|certain|approved|known)",
        r"refuses? to (?:receive|accept) (?:mail|messages|e-?mail)",
        r"recipient'?s? (?:preferences|settings|filters?|rules)",
        r"new mail is not currently being accepted", r"resolver\.rst\.notauthorized",
        r"message filtered", r"rejected due to user rules", r"user refuses to receive",
        r"refused due to recipient preferences", r"blocked by the recipient",
        r"recipient is only accepting mail from", r"is not accepting any mail", r"user reject",
        r"user not found", r"account is protected", r"bounced address", r"has restricted sms",
        r"refuse to receive", r"not authorized to (?:send|receive|post)",
    ),
    "requireptr": (
        r"\bptr\b", r"reverse ?(?:dns|lookup|name|address|resolution|host ?name)", r"\brdns\b",
        r"(?:cannot|can'?t|could not|unable to) (?:find|resolve|verify) (?:your |the )?"
        r"(?:hostname|host name|ip address|address|client)",
        r"unresolvable (?:ip|address|hostname|host)", r"no (?:dns )?(?:ptr|reverse)",
        r"hostname (?:does not|doesn'?t) match", r"dns reverse (?:failed|failure)",
        r"mismatch(?:es)? (?:the )?client ip", r"unverif[yi]?able sending ip",
        r"ip name (?:lookup|possibly forged)", r"(?:client|host) (?:name|ip) (?:does not|doesn'?t) resolve",
    ),
    "notcompliantrfc": (
        r"missing a valid (?:message-id|date|from)",
        r"rfc ?(?:2822|5322|822|5321|1123)", r"not (?:rfc|standard)[- ]compliant", r"non[- ]compliant",
        r"multiple (?:from|to|subject|date|message-id|sender) (?:headers|fields)", r"duplicate header",
        r"multiple addresses in (?:the )?from", r"message (?:is )?not (?:rfc|in compliance)",
        r"header (?:is )?(?:missing|malformed|invalid)", r"missing (?:date|from|message-id|subject) header",
        r"bare lf",
    ),
    "badreputation": (
        r"reputation", r"unexpected volume or user complaints", r"sender score",
        r"ip (?:is )?not (?:trusted|allowed to send)",
    ),
    "contenterror": (
        r"content-type (?:is )?(?:invalid|not|unsupported|missing)", r"improper use of 8-bit",
        r"illegal (?:character|attachment)", r"message header (?:size|is|not)",
        r"invalid (?:mime|header|charset|encoding)", r"mime (?:error|type)", r"line too long",
    ),
    "rejected": (
        r"can'?t determine purported responsible address", r"bouncedeny", r"valid-address-filter",
        r"senderfilterconfig", r"envelope blocked", r"invalid domain, see", r"not a registered gateway user",
        r"recursive cname", r"rule imposed mailbox access", r"from a different address or alias",
        r"sender address has been blacklisted", r"sender is spammer", r"spam reporting address",
        r"empty e-?mail address", r"unsigned dsn", r"your access to submit messages",
        r"sender (?:address )?(?:verify|verification) failed",
        r"(?:empty|null) (?:envelope )?senders? (?:is |are )?not allowed",
        r"no third-party dsns?", r"\bbatv\b", r"backscatter", r"(?:isn'?t|not) on the recipient'?s list of senders",
        r"delivery not authorized, message refused", r"unroutable sender", r"without a valid sender domain",
        r"sender (?:e-?mail )?(?:address )?(?:rejected|denied|blocked|blacklisted|refused|is invalid"
        r"|invalid|verify failed|not allowed|unknown|not pre-approved|domain (?:is )?(?:empty|invalid"
        r"|must exist|not found))",
        r"(?:invalid|bad|bogus|unroutable) (?:sender|mail from|envelope sender|return path)",
        r"domain of sender address .{0,80} does not (?:exist|resolve)",
        r"sender domain .{0,80} (?:does not exist|not found|unresolvable|unknown)",
        r"null sender", r"empty envelope sender", r"blacklisted sender",
        r"sender is (?:in|on) (?:my|our|the) (?:black|block) ?list", r"to/from an address that has been blacklisted",
        r"(?:mail from|sender|envelope from)[: ].{0,80}(?:rejected|refused|not (?:allowed|accepted|owned))",
        r"returned mail not accepted", r"administrative prohibition", r"address rejected",
        r"not allowed to post", r"does not accept mail from", r"recipient addresses rejected ?: access denied",
        r"sending domain .{0,80} does not exist", r"(?:emetteur|expediteur) invalide",
        r"no such domain .{0,80} (?:sender|from)", r"your (?:e-?mail )?address has been blacklisted",
        r"sender was rejected", r"mail from not owned", r"sender not pre-approved",
        r"fully qualified (?:e-?mail )?address required",
    ),
    "hostunknown": (
        r"mx records? points? to non-?existent hosts?",
        r"name or service not known", r"mail domain .{0,80} (?:is )?unknown", r"unknown domain",
        r"host (?:or domain )?(?:name )?(?:not found|unknown|does not exist|lookup failed)",
        r"unknown (?:host|domain)",
        r"(?:recipient |destination )?domain (?:name )?(?:does not exist|not found|unknown|is invalid|"
        r"not exist|does not resolve)",
        r"no such (?:domain|host)", r"unrouteable (?:address|mail domain)", r"unroutable address",
        r"couldn'?t find any host", r"name service error", r"nxdomain",
        r"dns lookup failure: host .{0,80} not found", r"domain (?:could not be|cannot be) (?:found|resolved)",
        r"host not found", r"no route to domain",
        r"(?:recipient|destination) (?:host|domain|system) (?:is )?(?:invalid|unknown|not found)",
        r"unable to resolve (?:the )?(?:host|domain|mx)", r"domain must exist", r"domain may not exist",
        r"illegal host/domain name", r"domain isn'?t in (?:my|our) list", r"domain is not reachable",
        r"(?:^|\b\d{3} )(?:[a-z0-9-]+\.)+[a-z]{2,} does not exist",
    ),
    "spamdetected": (
        r"mail content denied", r"our system has detected that this message is", r"bulk\.advertising",
        r"bulk e-?mail", r"rejecting (?:mail|banned) content", r"recurrent pattern detection",
        r"blocked by our (?:spam )?filter",
        r"(?:probable|probably|likely) (?:spam|junk)", r"anti-?spam", r"mass mailer", r"unacceptable content",
        r"spam(?!haus|cop|trap|-?rl)", r"junk ?mail", r"\bube\b", r"message content rejected", r"unsolicited",
        r"bulk ?mail", r"blacklisted url", r"uribl", r"surbl", r"message (?:content )?(?:looks|appears) like",
        r"classified as (?:bulk|junk)", r"considered (?:as )?(?:spam|junk|bulk)",
        r"content (?:filter|scan) (?:rejected|rejection)", r"dangerous content",
        r"rejected by (?:the )?content filter",
    ),
    "speeding": (
        r"receiving mail (?:too quickly|at a rate)",
        r"(?<!connection )rate limit", r"ratelimit", r"too fast", r"sending rate", r"throttl",
        r"too many (?:messages|mails|emails) (?:in|per|sent)", r"message rate",
        r"exceeded (?:the )?(?:sending |message )?rate",
    ),
    "toomanyconn": (
        r"too many (?:connections|concurrent|simultaneous|sessions|recipients|hops? from)",
        r"connection (?:limit|rate limit|rate)", r"(?:maximum|max|concurrency) (?:number of )?connections",
        r"exceeded (?:the )?(?:maximum )?(?:number of )?connections", r"too many errors", r"frequency limited",
        r"too much (?:load|traffic)",
    ),
    "blocked": (
        r"connection (?:was )?dropped", r"reset by peer", r"(?:esmtp )?not accepting connections", r"\bgo away\b",
        r"access (?:from|forbidden by) (?:your )?(?:ip|mail server)", r"your access ip",
        r"no matches to nameserver query", r"refused - see", r"has not passed validation",
        r"service not available, closing transmission channel", r"unwanted messages have been sent",
        r"temporarily deferred due to user complaints", r"to submit messages to this e-?mail system",
        r"looks suspiciously like (?:a )?spammer", r"(?:too many spams|sending spam) from your ip",
        r"you are sending spam", r"currently sending spam",
        r"traffic not accepted from this ip",
        r"(?:dynamic|zombie|dial-?up) (?:ip|hosts?|pool)", r"helo command rejected", r"open proxy",
        r"not (?:currently )?accepting (?:mail|connections) from your ip", r"listed as abusive",
        r"(?:is|are) (?:listed )?(?:in|on) (?:a|an|our|the) (?:black|block) ?list",
        r"bad (?:sender )?ip (?:address|profile)",
        r"you are not allowed to connect",
        r"block(?:ed|ing|list)", r"black ?list", r"\bdnsbl\b", r"\brbl\b", r"spamhaus", r"spamcop",
        r"barracuda", r"sorbs", r"listed (?:at|on|in|by)", r"banned", r"client host .{0,80}rejected",
        r"(?:your|the sending|sender|sending|client) (?:ip|host|server|network|mail server)(?: address)? "
        r"(?:has been |is |was )?(?:rejected|blocked|not allowed|denied|refused|listed)",
        r"messages from .{0,80} (?:weren'?t|were not) sent", r"please use the smtp server of your isp",
        r"dial-?up", r"dynamic(?:ally)? (?:ip|assigned|address|pool)", r"residential",
        r"invalid ip for sending", r"connection refused by", r"connection (?:rejected|denied)",
        r"not allowed to (?:send|connect)",
        r"refused by (?:local )?policy", r"(?:ip|host) (?:address )?(?:is )?not (?:allowed|permitted)",
        r"greylist", r"refused to talk to me", r"poor email", r"rejected (?:due to|because of) (?:your )?ip",
        r"mail server (?:at .{0,80} )?(?:is )?(?:rejected|blocked)", r"rejecting (?:connection|mail) from",
        r"too many invalid recipients", r"your (?:message|mail) has been rejected",
        r"(?:is|an?|as) open relay",
    ),
    # Reasons looked for in the text only, after the ones above.
    "policyviolation": (
        r"by non-member to a members-only list", r"closed mailing list", r"\bheaders? (?:error|are not accepted)",
        r"organizational settings", r"message given low priority", r"messages with multiple addresses",
        r"not subscribed to this group", r"containing images or other attachments", r"without solving a captcha",
        r"(?:a|its|their) policy that prohibit",
        r"(?:attachment|file type|extension)s? (?:is |are )?(?:not allowed|not permitted|prohibited|blocked|forbidden)",
        r"policy (?:violation|reasons|rejection|restriction)", r"violat\w* (?:\w+ )?polic",
        r"against (?:our |the )?polic", r"prohibited (?:attachment|content|file|by policy)",
        r"rejected by (?:\w+ )?policy", r"content policy",
        r"attachment (?:type )?(?:is )?(?:not allowed|prohibited|blocked)", r"local policy",
        r"organization'?s? (?:policy|security)", r"message (?:was )?not accepted for policy",
        r"protocol violation", r"denied by policy", r"content presents a potential", r"for policy reasons",
    ),
    "virusdetected": (r"virus", r"malware", r"infected", r"trojan", r"\bworm\b", r"malicious"),
    "systemerror": (
        r"can'?t create user output file", r"interrupted system call",
        r"encountered an error while being processed", r"loop was found in the mail exchanger",
        r"there is no mdb", r"remote server is misconfigured", r"system config(?:uration)? error",
        r"unable to connect to (?:the )?\S*\s?daemon",
        r"system error", r"internal (?:server |system )?error", r"local error in processing", r"server error",
        r"mail (?:system|server) (?:problem|error)", r"configuration error",
        r"temporar(?:y|ily) (?:local )?(?:problem|error)", r"out of memory",
        r"unable to (?:process|deliver).{0,80} (?:now|later)", r"i/o error", r"queue file write error",
        r"unknown mailer error", r"timeout waiting for", r"transaction failed$", r"^\d{3} transaction failed",
        r"service (?:currently |temporarily )?(?:unavailable|not available)", r"could not load",
    ),
    "networkerror": (
        r"could not connect and send the mail", r"malformed or unexpected name ?server reply",
        r"unable to resolve route",
        r"exceeded \d+ hops",
        r"loops back to myself", r"(?:dns|mx) records? for the destination", r"malformed (?:name ?server|dns) reply",
        r"forwarding loop", r"message (?:is )?looping", r"already has my delivered-to line",
        r"network error", r"connection (?:reset|lost|dropped)", r"no route to host",
        r"dns (?:lookup )?(?:error|problem|timeout)", r"name ?server (?:timeout|failure|error)",
        r"bad connection", r"host (?:is )?unreachable", r"lost connection", r"(?:routing|mail) loop",
        r"too many hops", r"hop count exceeded", r"loop detected", r"name service error .{0,80} try again",
        r"host name lookup failure",
    ),
    "systemfull": (
        r"system (?:storage|disk) (?:is )?full", r"insufficient (?:system storage|disk space)",
        r"disk (?:is )?full", r"mail system (?:is )?full", r"file system full", r"out of (?:disk )?space",
    ),
    "notaccept": (
        # A domain that takes no mail at all; "… from <sender>" is a block of one sender, not this.
        r"does not accept (?:e-?)?mail(?! from)", r"no smtp service", r"null mx",
        r"not accepting (?:network )?(?:mail|messages)(?! from)", r"indicated no smtp service",
        r"couldn'?t find a mail exchanger", r"no mx (?:record|host)", r"does not receive (?:e-?)?mail",
        r"accepts no mail", r"no mx found",
    ),
    "expired": (
        r"could not find a gateway for", r"failed to deliver to domain", r"\bhas been delayed",
        r"(?:has|have) been failing for a long time", r"(?:has|have) been in the queue too long",
        r"after (?:multiple|several|repeated) (?:retries|attempts)", r"server did not respond", r"not been collected",
        r"within the allowed queue period",
        r"retry time(?:out)? (?:exceeded|not reached)", r"(?:delivery|message) (?:time )?(?:has )?expired",
        r"giving up", r"(?:too long|been) in (?:the )?queue", r"message expired", r"expired:",
        r"(?:could not|couldn'?t|was not|not) (?:be )?delivered (?:within|for|after|in)",
        r"has not (?:yet )?been delivered", r"all hosts have been failing", r"unable to deliver in",
        r"could not deliver for the last", r"delivery attempts will continue", r"retry limit",
        r"did not accept our requests to connect", r"remote host is not responding", r"time to live",
        r"failed \d+ attempts", r"delivery failed \d+ attempts", r"maximum (?:time|retry)",
        r"queue (?:life ?time|timeout)", r"delivery (?:period|timeout) expired", r"timed out",
        r"will be retried", r"socket error", r"host not reachable",
    ),
    "failedstarttls": (
        r"starttls", r"\btls\b.{0,80}(?:required|failed|negotiat)", r"encryption required",
        r"(?:does not|doesn'?t) support (?:tls|ssl|starttls)", r"must issue a starttls",
    ),
    "securityerror": (
        r"account not subscribed to ses", r"authentication failure",
        r"authentication turned on in your e-?mail client", r"executable files are not allowed",
        r"insecure mail relay", r"authentification (?:invalide|requise)", r"is a dead domain",
        r"authentication (?:required|failed|credentials)", r"unauthenticated senders?", r"smtp authentication",
        r"security (?:policy|error)", r"\bcertificate\b", r"not authori[sz]ed", r"sender address forgery",
    ),
    "mailererror": (
        r"x-unix", r"mailer error", r"procmail", r"command (?:failed|died|output)", r"exit (?:code|status)",
        r"pipe to \|", r"program (?:exited|failed)", r"unknown mailer", r"permission denied",
        r"mail delivery to .{0,80}program",
    ),
    "syntaxerror": (
        r"improper use of smtp command pipelining",
        r"syntax error", r"command (?:unrecognized|not recognized|not implemented)",
        r"bad sequence of commands", r"parameter not implemented", r"malformed (?:address|command)",
        r"unrecognized command", r"invalid command",
    ),
}

class Phrases:
    """The phrases of one reason. Those with an "anchor" (a literal every match contains) only run
    when a Doc has seen their anchor in the text; the others run together as one regex."""

    __slots__ = ("always", "anchored", "name")

    def __init__(self, name: str, parts: Iterable[str]) -> None:
        self.name = name
        loose: list[str] = []
        self.anchored: list[tuple[str, re.Pattern[str]]] = []
        for part in parts:
            literal = anchor(part)
            if literal is None:
                loose.append(part)
            else:
                self.anchored.append((literal, re.compile(part)))
        self.always = re.compile("|".join(f"(?:{p})" for p in loose)) if loose else None

    def search(self, doc: Doc) -> bool:
        for pattern in doc.hits.get(self.name, ()):
            if pattern.search(doc.text):
                return True
        return bool(self.always and self.always.search(doc.text))


class Doc:
    """A normalized diagnostic and, found in one pass, which anchors of which reasons occur in it."""

    __slots__ = ("hits", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        hits: dict[str, list[re.Pattern[str]]] = {}
        index = _ANCHOR_INDEX
        for i in range(len(text) - 2):
            entries = index.get(text[i : i + 3])
            if entries:
                for anchor, reason, pattern in entries:
                    if text.startswith(anchor, i):
                        found = hits.setdefault(reason, [])
                        if pattern not in found:
                            found.append(pattern)
        self.hits = hits


def anchor(pattern: str) -> str | None:
    """The longest literal run at the top level of `pattern` that every match contains (≥ 3 chars)."""
    runs: list[str] = []
    cur = ""
    depth = 0
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            nxt = pattern[i + 1 : i + 2]
            if depth == 0 and nxt and nxt in ".-/'\"#()[]?*+|{}^$ ":
                cur += nxt
            elif depth == 0:
                runs.append(cur)
                cur = ""
            i += 2
            continue
        if ch == "[":
            end = pattern.find("]", i + 2)
            if depth == 0:
                runs.append(cur)
                cur = ""
            i = end + 1 if end > 0 else len(pattern)
            continue
        if ch == "(":
            if depth == 0:
                runs.append(cur)
                cur = ""
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            return None
        elif depth == 0:
            if ch in "?*{":
                runs.append(cur[:-1])  # the character before is optional
                cur = ""
                if ch == "{":
                    end = pattern.find("}", i)
                    i = end + 1 if end > 0 else len(pattern)
                    continue
            elif ch in ".^$":
                runs.append(cur)
                cur = ""
            elif ch != "+":
                cur += ch
        i += 1
    runs.append(cur)
    best = max(runs, key=len)
    return best if len(best.strip()) >= 3 else None


TEXT: dict[str, Phrases] = {reason: Phrases(reason, parts) for reason, parts in PHRASES.items()}
# Anchors by their first three characters, so that one pass over a text finds all that occur.
_ANCHOR_INDEX: dict[str, list[tuple[str, str, re.Pattern[str]]]] = {}
for _phrases in TEXT.values():
    for _anchor_text, _pattern in _phrases.anchored:
        _ANCHOR_INDEX.setdefault(_anchor_text[:3], []).append((_anchor_text, _phrases.name, _pattern))
del _phrases, _anchor_text, _pattern

# Replies only ever given to RCPT TO.


# Addresses and links say nothing about the failure ("blocked@example.net", ".../reason/#spam").
_EMAIL = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63})+")
_URL = re.compile(r"(?:https?://|\b(?=www\.))([^/\s?#]+)\S*")


def normalize(diagnostic: str) -> str:
    # Long texts are quoted messages or footers, not the reply: the reason is in the first lines.
    text = diagnostic[:MAX_TEXT].lower()
    if "@" in text:
        text = _EMAIL.sub("x@x", text)
    if "://" in text or "www." in text:
        text = _URL.sub(r"\1", text)
    return " ".join(text.split())


def says(reason: str, doc: Doc) -> bool:
    """Does the text say `reason`?"""
    return TEXT[reason].search(doc)
