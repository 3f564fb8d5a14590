package ghlcache_test

import (
	"os"
	"testing"

	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

func TestMain(m *testing.M) { os.Exit(testsvc.Main(m)) }
