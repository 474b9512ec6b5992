//go:build !race

package replicatest

const defaultSeeds = 1000
