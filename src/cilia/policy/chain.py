"""Egress L7 towards a local destination that has ingress L7 rules on the same port.

The datapath sends such a flow through one proxy only (the source's egress
redirect wins at the sender's hook; the proxy's upstream then reaches the
destination as already authorised). So the egress redirect must carry the
destination's ingress rules too: for every local destination identity with an
ingress redirect on the port, the egress redirect gets an explicit allow whose
`also` holds the destination's rules for this source. A request must satisfy
both. Any-peer (identity 0) allows no longer cover those identities.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from cilia.policy.desired import ANY_IDENTITY, Direction, EndpointPolicy, L7Allow, Redirect

IngressRedirects = Callable[[int], Iterable[Redirect]]
"""Local destination identity -> its ingress redirects."""


def merged(identity: int, allows: Iterable[L7Allow]) -> L7Allow | None:
    """The union of `allows` as one allow for `identity` (None: none given).

    An allow without rules admits every request, so it absorbs the others.
    """
    given = list(allows)
    if not given:
        return None
    http = (
        ()
        if any(not a.http for a in given)
        else tuple(dict.fromkeys(r for a in given for r in a.http))
    )
    kafka = (
        ()
        if any(not a.kafka for a in given)
        else tuple(dict.fromkeys(r for a in given for r in a.kafka))
    )
    return L7Allow(identity, http, kafka)


def _applicable(allows: Iterable[L7Allow], peer: int) -> list[L7Allow]:
    return [a for a in allows if a.identity in (peer, ANY_IDENTITY)]


def chain_redirect(
    redirect: Redirect, source: int, local: Iterable[int], ingress_of: IngressRedirects
) -> Redirect:
    """`redirect` (egress, of an endpoint with identity `source`) with the ingress rules
    of the `local` destination identities that redirect the same port with the same parser.
    """
    if redirect.direction is not Direction.EGRESS:
        return redirect
    chained: dict[int, L7Allow] = {}
    for dst in sorted(set(local)):
        theirs = [
            r
            for r in ingress_of(dst)
            if r.direction is Direction.INGRESS
            and r.port == redirect.port
            and r.parser == redirect.parser
        ]
        if not theirs:
            continue
        own = merged(dst, _applicable(redirect.allows, dst))
        also = merged(source, _applicable(theirs[0].allows, source))
        if own is None or also is None:
            continue  # one side does not police this pair at L7 on the port
        chained[dst] = L7Allow(dst, own.http, own.kafka, also)
    if not chained:
        return redirect
    kept = tuple(a for a in redirect.allows if a.identity not in chained)
    return Redirect(
        redirect.direction, redirect.port, redirect.parser, kept + tuple(chained.values())
    )


def chain_local_ingress(
    redirects: Iterable[Redirect], source: int, local: Iterable[int], ingress_of: IngressRedirects
) -> frozenset[Redirect]:
    """Every egress redirect of an endpoint chained with its local destinations' ingress rules."""
    destinations = list(local)
    return frozenset(chain_redirect(r, source, destinations, ingress_of) for r in redirects)


def has_egress_redirects(policy: EndpointPolicy) -> bool:
    """Whether the endpoint sends some traffic through an egress proxy."""
    return any(r.direction is Direction.EGRESS for r in policy.redirects)
