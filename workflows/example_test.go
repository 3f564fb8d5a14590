package workflows_test

import (
	"fmt"

	"github.com/ghl-agency/ghlcache/workflows"
)

func ExampleKey() {
	fmt.Println(workflows.Key(12))
	// Output: workflow:12:definition
}
