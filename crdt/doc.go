// Package crdt holds syncd's convergent data: changes, dots, version vectors
// and the per-field states they merge into.
//
// Every replica — region, Go SDK device, browser — runs this code unchanged,
// so it does no I/O and reads no clock. The one law it keeps: the state of a
// field is a function of the *set* of changes applied to it. Applying a
// change twice, or applying changes in any order, gives the same state; no
// causal-delivery assumption is made (a remove may arrive before the add it
// removes, a resolve before the siblings it replaces).
//
// How that holds for every kind: each change has a dot (origin replica,
// origin sequence number) and a context, the dots it supersedes. A field
// remembers, per origin, the highest dot that has been superseded (Ctx); a
// dot at or below that mark is dead whenever it arrives. Keeping only the
// highest superseded dot per origin is exact because a replica always sees
// its own earlier writes: a later write by the same origin to the same field
// (or set element) lists its earlier live dots in its context, so an
// origin's superseded dots are downward closed.
package crdt
