"""Linearizability checker for client histories of a key-value store.

The deterministic Raft simulator records what every client saw (invocation time, response
time, result) and hands the history to ``check``; a ``CheckResult`` says whether some total
order of the operations, consistent with real time, explains every result.

Rules of this module:
1. It is pure: no I/O, no clocks, no randomness, no imports from the rest of dfs. The same
   history always yields the same result, so a failing simulator seed replays exactly.
2. It owns only the data model below (``Operation``, ``CheckResult``) and the search. It must
   not know about Raft: times are whatever integers the caller uses (virtual ticks).
3. A malformed history (unknown kind, ``ret < call``, a write of ``None``) is a programmer
   error and raises ``ValueError``; a history that *cannot* be linearized is a normal result.

THE MODEL
Every key starts empty. The state of a key is a sequence of values:
    put(v)     sets the state to (v,)
    append(v)  extends the state by one element, v
    get        observes the state; the write result (``output``) is ignored for put/append
A key on which no ``append`` occurs is a plain register, so its get outputs are read as
"value or None" (None = never written). A key with an ``append`` is a sequence, so its get
outputs are the whole sequence: a tuple or list of the appended values (None and () both mean
empty) or, when every element is a str, their concatenation as one str. Values are compared
with == and must be hashable; None may not be written because it means "absent".

HOW IT WORKS
Linearizability is compositional (Herlihy & Wing): a history is linearizable iff the
sub-history of every key is, so each key is checked alone. That turns one search over n ops
into several much smaller ones ("P-compositionality", as in porcupine).

For one key we run the Wing & Gong search with Lowe's memoization, the algorithm of
porcupine's ``checkSingle``. Every op becomes two entries, its call and its return, in a
doubly linked list sorted by time. A precedes B iff A.ret < B.call; at equal times calls sort
before returns, so ops touching at an instant count as concurrent. Then:

    walk the list from the head;
    at a call entry, try to linearize that op now: apply it to the model state; if the
    model accepts it (a get must see exactly the state) and (linearized set, new state) was
    never seen before, push (op, old state), unlink the op's call and return entries
    ("lift", as in dancing links) and restart from the head;
    otherwise move on to the next entry;
    at a return entry, the op returning there should already be linearized, so the last
    choice was wrong: pop it, relink it and try the entry after its call instead.
    The history is linearizable when the list is empty, and not when the stack is empty.

Walking stops at the first return entry, so only ops concurrent with the earliest pending
return are ever candidates: for the mostly sequential histories a simulator produces (each
client has at most one op in flight) the search is close to linear. The cache of
(linearized bitmask, state) pairs is what keeps it from being exponential when concurrent
ops commute: two orders that reach the same set and the same state are explored once.

Two sound prunings on top of porcupine's search keep common shapes from blowing up:
  - Gets go first. A get that fits the current state could have been linearized before
    every other candidate (it changes nothing, and no remaining op returned before its call),
    so when the search backtracks over a get it backtracks over the choice before it too.
    k concurrent reads then cost k steps, not 2^k subsets.
  - Appends must stay a prefix of the next read (``_AppendPruner``). Until a put resets it,
    the state only grows, so an append whose result is not a prefix of what the earliest-
    returning remaining get saw is refused at once, unless a remaining put that could reset
    the state first exists. Concurrent appends then cost about what concurrent puts do,
    instead of every order of them being tried until the next read.

States are hash-consed (``_States``): equal sequences get the same small integer, so an
append costs one dict lookup and a cache key is (int, int) however long the sequence grows.

An op with no response (``ret is None``: the client timed out or crashed) may have taken
effect at any time after its call, or never. We give it a return at infinity. Putting it
last is the same as "never": nothing after it observes it. A pending get observes nothing
and is dropped. A pending write whose value no get ever observed is dropped too: in any
linearization, between it and the next put no get can occur (it would have seen the value),
so removing it changes no result. This removes most timed-out writes before the search.

Before searching, cheap necessary conditions catch the common bugs with a clear message and
without any search: a get that sees a value (or a value k times) that fewer than k writes
invoked before the get returned could have produced ("never written", "read from the future",
"duplicated append"), and a get that sees the empty state after a write had completed.

LIMITATIONS
The search is exponential in the worst case (the problem is NP-complete). Many concurrent
writes that no later read disambiguates can blow it up; ``time_budget_steps`` bounds the
work per key, and a key that runs out is reported as ``unknown``, never as a violation.
Pending writes whose value was observed stay in the search with an infinite window and
widen it. Only put/append/get are modelled (no compare-and-set, no deletes). The checker
answers "is there *a* linearization"; it does not return the linearization itself.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

KINDS = frozenset({"put", "get", "append"})

# Internal op kinds, small ints so the search loop compares ints, not strings.
_PUT = 0
_APPEND = 1
_GET = 2

_EMPTY = 0  # the state id of the empty sequence in every ``_States``

# How many ops the failure explanation lists before it elides the rest: enough to show the
# conflict, short enough to read in a simulator failure report.
_EXPLAIN_OPS_MAX = 10
_REPR_CHARS_MAX = 60


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation as the client saw it.

    ``value`` is the argument of put/append (ignored for get); ``output`` is what a get
    returned (ignored for put/append). ``ret is None`` means no response was received.
    """

    client: int
    kind: str
    key: str | int
    value: object
    output: object
    call: int
    ret: int | None


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The verdict. ``ok`` is True only when every key was proven linearizable.

    A violation has ``ok=False, unknown=False`` and names the first failing key (in order of
    first appearance in the history). When the search budget ran out on some key and no key
    failed, ``ok=False, unknown=True``: nothing was proven either way.
    """

    ok: bool
    key: str | int | None = None
    explanation: str = ""
    unknown: bool = False
    steps: int = 0  # search steps spent over all keys; helps size ``time_budget_steps``

    @property
    def violation(self) -> bool:
        return not self.ok and not self.unknown


def check(history: Sequence[Operation], *, time_budget_steps: int | None = None) -> CheckResult:
    """Check that ``history`` is linearizable; ``time_budget_steps`` bounds the search per key."""
    if time_budget_steps is not None and time_budget_steps < 0:
        raise ValueError(f"time_budget_steps must be >= 0, got {time_budget_steps}")
    by_key: dict[str | int, list[Operation]] = {}
    for op in history:
        _validate(op)
        by_key.setdefault(op.key, []).append(op)

    steps = 0
    first_unknown: tuple[str | int, _Outcome] | None = None
    for key, ops in by_key.items():
        outcome = _check_key(ops, time_budget_steps)
        steps += outcome.steps
        if outcome.verdict == _VIOLATION:
            return CheckResult(False, key, f"key {key!r}: {outcome.explanation}", False, steps)
        if outcome.verdict == _UNKNOWN and first_unknown is None:
            first_unknown = (key, outcome)
    if first_unknown is not None:
        key, outcome = first_unknown
        return CheckResult(False, key, f"key {key!r}: {outcome.explanation}", True, steps)
    return CheckResult(True, None, "", False, steps)


def _validate(op: Operation) -> None:
    if op.kind not in KINDS:
        raise ValueError(f"unknown operation kind {op.kind!r} in {op}")
    if op.ret is not None and op.ret < op.call:
        raise ValueError(f"operation returns before it is called: {op}")
    if op.kind != "get":
        if op.value is None:
            raise ValueError(f"None cannot be written, it means 'absent': {op}")
        try:
            hash(op.value)
        except TypeError:
            raise ValueError(f"written values must be hashable: {op}") from None


# ----------------------------------------------------------------------------------------
# Per-key check: normalize, drop, pre-check, search.

_LINEARIZABLE = "linearizable"
_VIOLATION = "violation"
_UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class _Outcome:
    verdict: str
    explanation: str = ""
    steps: int = 0


@dataclass(frozen=True, slots=True)
class _Invalid:
    """A get output that no state can match (wrong type, unhashable element)."""

    output: object


# What a get must observe: a tuple of elements, a str (concatenation) or nothing possible.
_Target = tuple[Hashable, ...] | str | _Invalid


def _target_of(output: object, append_mode: bool) -> _Target:
    if output is None:
        return ()
    if not append_mode:
        candidate: tuple[object, ...] = (output,)
    elif isinstance(output, str):
        return output
    elif isinstance(output, tuple | list):
        candidate = tuple(output)
    else:
        return _Invalid(output)
    try:
        hash(candidate)
    except TypeError:
        return _Invalid(output)
    return candidate


def _check_key(ops: list[Operation], steps_max: int | None) -> _Outcome:
    append_mode = any(op.kind == "append" for op in ops)
    targets: dict[int, _Target] = {
        i: _target_of(op.output, append_mode)
        for i, op in enumerate(ops)
        if op.kind == "get" and op.ret is not None
    }
    violation = _precheck(ops, targets)
    if violation is not None:
        return _Outcome(_VIOLATION, violation)

    observed: set[Hashable] = set()
    texts: list[str] = []
    for target in targets.values():
        if isinstance(target, str):
            texts.append(target)
        elif isinstance(target, tuple):
            observed.update(target)

    def unobserved(value: object) -> bool:
        if value in observed:
            return False
        return not (isinstance(value, str) and any(value in text for text in texts))

    kept: list[Operation] = []
    kept_targets: list[_Target] = []
    for i, op in enumerate(ops):
        if op.ret is None and (op.kind == "get" or unobserved(op.value)):
            continue  # see "pending" in the module docstring: dropping these is exact
        kept.append(op)
        kept_targets.append(targets.get(i, ()))
    return _search(kept, kept_targets, steps_max, append_mode=append_mode)


def _precheck(ops: list[Operation], targets: dict[int, _Target]) -> str | None:
    """Necessary conditions that need no search; return a violation's explanation or None."""
    # The state holds a value at most once per write of it (a put resets, an append adds one),
    # and only writes invoked before the get returned can be ordered before it.
    write_calls: dict[object, list[int]] = {}
    writes_of: dict[object, list[Operation]] = {}
    completed_writes = [op for op in ops if op.kind != "get" and op.ret is not None]
    first_completed = min(completed_writes, key=lambda op: op.ret or 0, default=None)
    for op in ops:
        if op.kind != "get":
            write_calls.setdefault(op.value, []).append(op.call)
            writes_of.setdefault(op.value, []).append(op)
    for calls in write_calls.values():
        calls.sort()

    for i in sorted(targets, key=lambda i: (ops[i].call, i)):
        get, target = ops[i], targets[i]
        assert get.ret is not None  # only completed gets have targets
        if isinstance(target, _Invalid):
            return f"get output can never match a state:\n  {_describe(get)}"
        if target == ():
            # No op ever empties a key again, so after a completed write a get cannot see
            # the initial state. (An empty str is not checked: appending "" is a write.)
            first = first_completed
            if first is not None and first.ret is not None and first.ret < get.call:
                return (
                    "get saw the empty state after a write had completed:\n"
                    f"  {_describe(first)}\n  {_describe(get)}"
                )
            continue
        if isinstance(target, str):
            continue  # a concatenation cannot be split into elements without searching
        for element, count in Counter(target).items():
            possible = bisect.bisect_right(write_calls.get(element, []), get.ret)
            if possible < count:
                what = "never written" if element not in write_calls else "not yet written"
                if possible > 0:
                    what = f"seen {count} times but only {possible} write(s) could precede it"
                lines = [f"get saw {_short(element)} ({what}):", f"  {_describe(get)}"]
                lines += [f"  {_describe(w)}" for w in writes_of.get(element, [])[:3]]
                return "\n".join(lines)
    return None


# ----------------------------------------------------------------------------------------
# States: hash-consed sequences.


class _States:
    """Interned sequences: equal sequences have equal ids, so a state is one small int.

    Id 0 is the empty sequence; every other id is (parent id, last element). Since a child is
    always looked up before it is created, two equal sequences can never get two ids.
    """

    def __init__(self) -> None:
        self.parent: list[int] = [-1]
        self.element: list[Hashable] = [None]
        self.length: list[int] = [0]
        self.child: dict[tuple[int, Hashable], int] = {}

    def extend(self, state: int, element: Hashable) -> int:
        key = (state, element)
        found = self.child.get(key)
        if found is not None:
            return found
        new = len(self.parent)
        self.parent.append(state)
        self.element.append(element)
        self.length.append(self.length[state] + 1)
        self.child[key] = new
        return new

    def find(self, elements: tuple[Hashable, ...]) -> int | None:
        """The id of ``elements`` if that sequence exists yet, else None."""
        state = _EMPTY
        for element in elements:
            found = self.child.get((state, element))
            if found is None:
                return None
            state = found
        return state

    def elements(self, state: int) -> tuple[Hashable, ...]:
        out: list[Hashable] = []
        while state != _EMPTY:
            out.append(self.element[state])
            state = self.parent[state]
        out.reverse()
        return tuple(out)


class _GetMatcher:
    """Answers "does state s satisfy get i" in O(1) amortized."""

    def __init__(self, states: _States, targets: list[_Target]) -> None:
        self.states = states
        self.targets = targets
        # A tuple target is resolved to its state id the first time a state of the right
        # length is tested; it stays valid because ids are never reused.
        self.resolved: list[int | None] = [None] * len(targets)
        self.text_memo: dict[tuple[int, int], bool] = {}

    def matches(self, i: int, state: int) -> bool:
        resolved = self.resolved[i]
        if resolved is not None:
            return state == resolved
        target = self.targets[i]
        if isinstance(target, tuple):
            if self.states.length[state] != len(target):
                return False
            resolved = self.states.find(target)
            # Not found means no state equal to the target exists yet, so not this one.
            self.resolved[i] = resolved
            return resolved == state
        if isinstance(target, str):
            memo_key = (i, state)
            hit = self.text_memo.get(memo_key)
            if hit is None:
                texts = [e for e in self.states.elements(state) if isinstance(e, str)]
                hit = len(texts) == self.states.length[state] and "".join(texts) == target
                self.text_memo[memo_key] = hit
            return hit
        return False


class _AppendPruner:
    """Rejects an append early when the next get can no longer see its result.

    After an append the state only grows until the next put. Let g be the remaining get that
    returns first; it must see its target T. If the new state is not a prefix of T, some put
    must come between: a remaining put of T[0] (the last put before g sets the first element)
    called by g's return. If there is none, this branch is dead. Without this rule, k
    concurrent appends are explored in up to k! orders before the get that refutes them.
    """

    def __init__(self, ops: list[Operation], targets: list[_Target], states: _States) -> None:
        self.states = states
        self.targets = targets
        completed_gets = [i for i, op in enumerate(ops) if op.kind == "get" and op.ret is not None]
        self.gets_by_ret = sorted(completed_gets, key=lambda i: (ops[i].ret, i))
        self.rank = [0] * len(ops)  # position of a get in gets_by_ret
        for position, i in enumerate(self.gets_by_ret):
            self.rank[i] = position
        self.puts_of: dict[object, list[int]] = {}
        for i, op in enumerate(ops):
            if op.kind == "put":
                self.puts_of.setdefault(op.value, []).append(i)
        self.calls = [op.call for op in ops]
        self.rets = [op.ret or 0 for op in ops]
        self.done = bytearray(len(ops))
        # Every get before get_cursor is linearized; undoing one moves the cursor back, so it
        # stays a correct lower bound under backtracking.
        self.get_cursor = 0
        self.prefix_memo: dict[tuple[int, int], bool] = {}

    def mark(self, i: int) -> None:
        self.done[i] = 1

    def unmark(self, i: int) -> None:
        self.done[i] = 0
        # A non-get has rank 0: moving the cursor to 0 is merely conservative.
        self.get_cursor = min(self.get_cursor, self.rank[i])

    def allows(self, state: int) -> bool:
        gets, done = self.gets_by_ret, self.done
        while self.get_cursor < len(gets) and done[gets[self.get_cursor]]:
            self.get_cursor += 1
        if self.get_cursor == len(gets):
            return True
        get = gets[self.get_cursor]
        target = self.targets[get]
        if not isinstance(target, tuple):
            return True  # a concatenated str cannot be checked element by element
        if target:
            for put in self.puts_of.get(target[0], ()):
                if not done[put] and self.calls[put] <= self.rets[get]:
                    return True  # that put may reset the state before the get
        return self._is_prefix(state, get, target)

    def _is_prefix(self, state: int, get: int, target: tuple[Hashable, ...]) -> bool:
        states, memo = self.states, self.prefix_memo
        unresolved: list[int] = []
        while True:
            if state == _EMPTY:
                result = True
                break
            hit = memo.get((state, get))
            if hit is not None:
                result = hit
                break
            length = states.length[state]
            if length > len(target) or target[length - 1] != states.element[state]:
                result = False
                break
            unresolved.append(state)
            state = states.parent[state]
        # Each unresolved state matched its own last element, so it shares the verdict of
        # the ancestor that decided.
        for resolved in unresolved:
            memo[(resolved, get)] = result
        memo[(state, get)] = result
        return result


# ----------------------------------------------------------------------------------------
# The WGL search.


def _search(
    ops: list[Operation], targets: list[_Target], steps_max: int | None, *, append_mode: bool
) -> _Outcome:
    n = len(ops)
    states = _States()
    matcher = _GetMatcher(states, targets)
    kinds = [_PUT if op.kind == "put" else _APPEND if op.kind == "append" else _GET for op in ops]
    values = [op.value for op in ops]  # checked hashable by _validate
    # A put's result does not depend on the state, so compute it once.
    put_state = [
        states.extend(_EMPTY, values[i]) if kind == _PUT else _EMPTY for i, kind in enumerate(kinds)
    ]

    pruner = _AppendPruner(ops, targets, states) if append_mode else None

    # Entries sorted by time; a pending op returns after everything else. At equal times a
    # call (0) sorts before a return (1): an op that starts when another ends is concurrent.
    # "Infinity" must follow every time in the history, calls included: a pending op may be
    # called after the last response.
    infinity = max((op.call if op.ret is None else op.ret for op in ops), default=0) + 1
    events: list[tuple[int, int, int]] = []
    for i, op in enumerate(ops):
        events.append((op.call, 0, i))
        events.append((infinity if op.ret is None else op.ret, 1, i))
    events.sort()
    # Node 0 is the head, node m + 1 the tail; nodes 1..m are the entries in time order.
    m = 2 * n
    head, tail = 0, m + 1
    next_ = [*range(1, m + 2), tail]
    prev = [head, *range(0, m + 1)]
    node_op = [-1] * (m + 2)
    node_is_call = [False] * (m + 2)
    return_node = [0] * n
    for node, (_, is_return, i) in enumerate(events, start=1):
        node_op[node] = i
        node_is_call[node] = not is_return
        if is_return:
            return_node[i] = node

    linearized = 0  # bit i set = op i is in the current linearization
    state = _EMPTY
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[int, int]] = []  # (call node, state before it)
    best_depth, best_linearized, best_state = 0, 0, _EMPTY
    steps = 0
    entry = next_[head]
    while next_[head] != tail:
        steps += 1
        if steps_max is not None and steps > steps_max:
            explanation = (
                f"search budget of {steps_max} steps ran out after linearizing "
                f"{best_depth} of {n} ops; result unknown"
            )
            return _Outcome(_UNKNOWN, explanation, steps)
        if node_is_call[entry]:
            i = node_op[entry]
            kind = kinds[i]
            if kind == _GET:
                accepted, new_state = matcher.matches(i, state), state
            elif kind == _PUT:
                accepted, new_state = True, put_state[i]
            else:
                new_state = states.extend(state, values[i])
                accepted = pruner is None or pruner.allows(new_state)
            if accepted:
                new_linearized = linearized | (1 << i)
                cache_key = (new_linearized, new_state)
                if cache_key not in seen:
                    seen.add(cache_key)
                    stack.append((entry, state))
                    linearized, state = new_linearized, new_state
                    if pruner is not None:
                        pruner.mark(i)
                    # Lift: unlink the call entry, then its return entry.
                    next_[prev[entry]] = next_[entry]
                    prev[next_[entry]] = prev[entry]
                    match = return_node[i]
                    next_[prev[match]] = next_[match]
                    prev[next_[match]] = prev[match]
                    if len(stack) > best_depth:
                        best_depth, best_linearized, best_state = len(stack), linearized, state
                    entry = next_[head]
                    continue
            entry = next_[entry]
        else:
            # Backtrack. If the undone op is a get, the configuration before it is dead as
            # well, so keep undoing: a get that fits now could have gone first in any
            # linearization of the rest (it changes no state, and being a candidate means
            # no remaining op returned before it was called). Without this, k concurrent
            # gets would be tried in all 2^k subsets before a doomed op.
            while True:
                if not stack:
                    elements = states.elements(best_state)
                    # Show a register's state the way its gets report it: value or None.
                    shown = elements if append_mode else (elements[0] if elements else None)
                    explanation = _explain(ops, best_depth, best_linearized, shown)
                    return _Outcome(_VIOLATION, explanation, steps)
                entry, state = stack.pop()
                i = node_op[entry]
                linearized &= ~(1 << i)
                if pruner is not None:
                    pruner.unmark(i)
                # Unlift in the reverse order of the lift: the return entry, then the call.
                match = return_node[i]
                next_[prev[match]] = match
                prev[next_[match]] = match
                next_[prev[entry]] = entry
                prev[next_[entry]] = entry
                if kinds[i] != _GET:
                    break
            entry = next_[entry]
    return _Outcome(_LINEARIZABLE, "", steps)


def _explain(ops: list[Operation], depth: int, linearized: int, state: object) -> str:
    """Describe where the deepest partial linearization got stuck.

    The ops that could have come next are those not linearized whose call is no later than
    the earliest return among them: one of them had to be next, and none fitted.
    """
    rest = [i for i in range(len(ops)) if not linearized >> i & 1]
    infinity = float("inf")

    def ret_of(i: int) -> float:
        ret = ops[i].ret
        return infinity if ret is None else ret

    deadline = min(ret_of(i) for i in rest)
    stuck = sorted((i for i in rest if ops[i].call <= deadline), key=lambda i: (ops[i].call, i))
    lines = [
        f"not linearizable; the longest linearizable prefix has {depth} of {len(ops)} ops "
        f"and ends in state {_short(state)}; none of these fits next:"
    ]
    lines += [f"  {_describe(ops[i])}" for i in stuck[:_EXPLAIN_OPS_MAX]]
    if len(stuck) > _EXPLAIN_OPS_MAX:
        lines.append(f"  ... and {len(stuck) - _EXPLAIN_OPS_MAX} more")
    return "\n".join(lines)


def _short(value: object) -> str:
    text = repr(value)
    if len(text) <= _REPR_CHARS_MAX:
        return text
    half = (_REPR_CHARS_MAX - 5) // 2
    return f"{text[:half]} ... {text[-half:]}"


def _describe(op: Operation) -> str:
    if op.kind == "get":
        body = f"get({op.key!r}) -> {_short(op.output)}"
    else:
        body = f"{op.kind}({op.key!r}, {_short(op.value)})"
    ret = "pending" if op.ret is None else str(op.ret)
    return f"client {op.client}: {body} [{op.call}, {ret}]"
