package credits_test

import (
	"fmt"

	"github.com/ghl-agency/ghlcache/credits"
)

func ExampleKey() {
	fmt.Println(credits.Key(7, "enrichment"))
	// Output: credits:7:enrichment
}

func ExampleChange_Validate() {
	err := credits.Change{UserID: 7, Type: "Enrichment", Amount: 5}.Validate()
	fmt.Println(err)
	// Output: credits: invalid input: credit type "Enrichment" must match ^[a-z][a-z0-9_]{0,31}$
}
