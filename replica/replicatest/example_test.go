package replicatest_test

import (
	"fmt"

	"github.com/syncd/syncd/replica/replicatest"
)

// Other tests can play a deployment of their own shape; the error, if any,
// is a *replicatest.Failure carrying the seed and trace.
func ExampleConfig_Run() {
	cfg := replicatest.DefaultConfig()
	cfg.Regions, cfg.Devices, cfg.Ops = 3, 4, 300
	res, err := cfg.Run(42)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("converged:", res.Changes > 0 && res.Rounds > 0)
	// Output: converged: true
}
