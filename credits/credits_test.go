package credits

import (
	"regexp"
	"strings"
	"testing"
)

// FuzzTypeValidate: the hand-written check agrees with the documented
// pattern on any input.
func FuzzTypeValidate(f *testing.F) {
	re := regexp.MustCompile(typePattern)
	for _, s := range []string{"", "a", "enrichment", "sms_2", "Bad", "1a", "a-b", "a*", strings.Repeat("a", 32), strings.Repeat("a", 33), "é", "a\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := validType(s), re.MatchString(s); got != want {
			t.Fatalf("validType(%q) = %v, pattern says %v", s, got, want)
		}
	})
}
