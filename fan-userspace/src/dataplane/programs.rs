//! The programs: loading the object, reusing the
//! pinned programs of the same version, pinning, and handing programs out
//! by name (to attach, or to test runs).

use super::*;

impl Dataplane {
    /// Loads every program.
    pub fn load() -> Result<Self> {
        Self::load_with(&mut EbpfLoader::new())
    }

    /// Loads every program with its maps pinned in `dir`: maps already pinned
    /// there (by an earlier attach) are reused, so their contents survive;
    /// maps not pinned yet are created and pinned.
    pub fn load_pinned(dir: &StateDir) -> Result<Self> {
        let paths: Vec<_> = MAPS.iter().map(|m| dir.map(m)).collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in MAPS.iter().zip(&paths) {
            loader.map_pin_path(name, path.as_path());
        }
        // Counters of an older version with fewer reasons: unpinned here,
        // created at this size by the load, their values written back.
        let carried = CarriedCounters::take(dir)?;
        // A map missing beside others (an older layout's state, or counters
        // carried over) is created now, and programs pinned before cannot
        // be using it.
        let created = dir.exists() && paths.iter().any(|p| !p.exists());
        let mut dataplane = match Self::load_with(&mut loader) {
            Ok(dataplane) => dataplane,
            Err(e) => {
                carried.put_back();
                return Err(e);
            }
        };
        carried.restore(&mut dataplane.ebpf)?;
        dataplane.created_maps = created;
        Ok(dataplane)
    }

    pub(super) fn load_with(loader: &mut EbpfLoader<'_>) -> Result<Self> {
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .context("loading the fan-xdp eBPF object")?;
        for name in TC_PROGRAMS {
            let program: &mut SchedClassifier = program_by_name(&mut ebpf, name)?;
            program
                .load()
                .with_context(|| format!("verifier rejected {name}"))?;
        }
        let xdp: &mut Xdp = program_by_name(&mut ebpf, DECAP_XDP)?;
        xdp.load()
            .with_context(|| format!("verifier rejected {DECAP_XDP}"))?;
        Ok(Self {
            ebpf,
            clsact: Vec::new(),
            pinned: None,
            created_maps: false,
        })
    }

    /// Makes links run the programs pinned in `dir` if they are this very
    /// version (every program's tag the same as this load's): links then
    /// share one instance of each program with the pins, and with them the
    /// id `fan-xdp run` follows. Returns
    /// false (and links take this load's programs, all of them, and the pins
    /// must be replaced with them) on a first attach, a new version, or
    /// when this load created maps the pinned programs do not know.
    pub fn use_pinned_programs(&mut self, dir: &StateDir) -> Result<bool> {
        if self.created_maps {
            return Ok(false);
        }
        let mut tc = std::collections::HashMap::new();
        for name in TC_PROGRAMS {
            let path = dir.program(name);
            let Ok(program) = SchedClassifier::from_pin(&path) else {
                return Ok(false);
            };
            if program.info()?.tag() != self.tag(name)? {
                return Ok(false);
            }
            tc.insert(name, program);
        }
        let Ok(xdp) = Xdp::from_pin(
            dir.program(DECAP_XDP),
            aya_obj::programs::XdpAttachType::Interface,
        ) else {
            return Ok(false);
        };
        if xdp.info()?.tag() != self.tag(DECAP_XDP)? {
            return Ok(false);
        }
        self.pinned = Some(PinnedPrograms { tc, xdp });
        Ok(true)
    }

    /// The id of the instance of `program` links should run.
    pub(super) fn target_id(&mut self, program: &str) -> Result<u32> {
        Ok(if program == DECAP_XDP {
            self.target_xdp(program)?.info()?.id()
        } else {
            self.target_tc(program)?.info()?.id()
        })
    }

    pub(super) fn target_tc(&mut self, program: &str) -> Result<&mut SchedClassifier> {
        match &mut self.pinned {
            Some(pinned) => pinned
                .tc
                .get_mut(program)
                .ok_or_else(|| anyhow!("no pinned program {program}")),
            None => program_by_name(&mut self.ebpf, program),
        }
    }

    pub(super) fn target_xdp(&mut self, program: &str) -> Result<&mut Xdp> {
        match &mut self.pinned {
            Some(pinned) => Ok(&mut pinned.xdp),
            None => program_by_name(&mut self.ebpf, program),
        }
    }

    /// Pins every program in `dir`, replacing pins of older versions.
    pub fn pin_programs(&mut self, dir: &StateDir) -> Result<()> {
        for name in TC_PROGRAMS.into_iter().chain([DECAP_XDP]) {
            let path = dir.program(name);
            let _ = std::fs::remove_file(&path);
            let program = self
                .ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("no program {name}"))?;
            program
                .pin(&path)
                .with_context(|| format!("pinning {}", path.display()))?;
        }
        Ok(())
    }

    pub(super) fn tag(&self, name: &str) -> Result<u64> {
        let program = self
            .ebpf
            .program(name)
            .ok_or_else(|| anyhow!("no program {name}"))?;
        Ok(program.info()?.tag())
    }

    /// A TC program by name, for attaching elsewhere or test runs.
    pub fn classifier(&mut self, name: &str) -> Result<&mut SchedClassifier> {
        program_by_name(&mut self.ebpf, name)
    }

    /// The XDP decapsulation program, for test runs.
    pub fn xdp(&mut self) -> Result<&mut Xdp> {
        program_by_name(&mut self.ebpf, DECAP_XDP)
    }

    /// How many instructions the verifier processed for each program.
    pub fn verified_instructions(&self) -> Result<Vec<(&'static str, u32)>> {
        TC_PROGRAMS
            .into_iter()
            .chain([DECAP_XDP])
            .map(|name| {
                let program = self
                    .ebpf
                    .program(name)
                    .ok_or_else(|| anyhow!("no program {name}"))?;
                Ok((
                    name,
                    program.info()?.verified_instruction_count().unwrap_or(0),
                ))
            })
            .collect()
    }

    /// The bench's XDP_PASS baseline, loaded on first use.
    pub fn baseline_xdp(&mut self) -> Result<&mut Xdp> {
        let xdp: &mut Xdp = program_by_name(&mut self.ebpf, BENCH_XDP_PASS)?;
        if xdp.fd().is_err() {
            xdp.load()?;
        }
        Ok(xdp)
    }
}

pub(super) fn program_by_name<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("no program {name} in the object"))?;
    Ok(program.try_into()?)
}
