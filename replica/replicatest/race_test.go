//go:build race

package replicatest

// The race detector makes the simulator about seven times slower (about 2
// s of CPU per seed); the core packages run under it in CI, so the default
// seed count shrinks to keep that run near a minute. The simulator is
// single-goroutine per seed, so what -race adds here is coverage of the
// parallel seed runner and of any shared state in the core, which a few
// dozen seeds exercise as well as a thousand. -seeds still sets any count.
const defaultSeeds = 30
